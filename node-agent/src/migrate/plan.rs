//! Compiles an old → new [`Shape`] pair into byte-level operations, matched by
//! member name, and applies them to one key or value.

use baton_ebpf::btf::{Member, Shape};

use super::layout::same_shape;

/// An integer (or bitfield) position inside a key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IntField {
    bit_off: u32,
    bits: u32,
    signed: bool,
}

/// One step of a conversion. The destination starts zeroed, so added members
/// and padding need no step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Identical bytes.
    Copy { src: usize, dst: usize, len: usize },
    /// Integer resize / re-sign with a range check; `path` indexes `Plan::paths`.
    Int {
        src: IntField,
        dst: IntField,
        path: usize,
    },
    /// Old bytes with no new home (dropped array elements) that must be zero.
    MustBeZero { src: usize, len: usize, path: usize },
}

/// A compiled conversion of one side (key or value).
#[derive(Clone, Debug, Default)]
pub(super) struct Plan {
    pub ops: Vec<Op>,
    /// Member paths for error messages.
    pub paths: Vec<String>,
    /// Human-readable changes (`+value.weight`, `value.port: u32 → u16`…).
    pub changes: Vec<String>,
    /// Old shape ≅ new shape: a plain copy.
    pub identity: bool,
    /// Some old member is dropped: two old keys may become one new key.
    pub lossy: bool,
}

/// A value that does not survive conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fault {
    /// Member path.
    pub path: String,
    /// The offending value.
    pub value: String,
    /// What it would have had to fit.
    pub target: String,
}

/// A shape pair that cannot be converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Incompatible {
    pub path: String,
    pub reason: String,
}

fn describe(s: &Shape) -> String {
    match s {
        Shape::Int { size, signed } => format!("{}{}", if *signed { 's' } else { 'u' }, size * 8),
        Shape::Enum { size } => format!("enum{}", size * 8),
        Shape::Array { elem, len } => format!("{}[{len}]", describe(elem)),
        Shape::Struct { name, size, .. } => format!("struct {name} ({size}B)"),
        Shape::Opaque { size } => format!("opaque {size}B"),
    }
}

fn int_field(shape: &Shape, bit_off: u32, bitfield: u32) -> Option<IntField> {
    let (size, signed) = match shape {
        Shape::Int { size, signed } => (*size, *signed),
        Shape::Enum { size } => (*size, false),
        _ => return None,
    };
    Some(IntField {
        bit_off,
        bits: if bitfield > 0 { bitfield } else { size * 8 },
        signed,
    })
}

/// Members whose byte ranges overlap: a union, converted only when identical.
fn union_like(members: &[Member]) -> bool {
    let mut spans: Vec<(u32, u32)> = members
        .iter()
        .map(|m| {
            let bits = if m.bitfield_size > 0 {
                m.bitfield_size
            } else {
                m.size.max(1) * 8
            };
            (m.bit_offset, m.bit_offset + bits)
        })
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

struct Builder {
    plan: Plan,
}

impl Builder {
    fn path(&mut self, p: &str) -> usize {
        self.plan.paths.push(p.to_string());
        self.plan.paths.len() - 1
    }

    fn copy(&mut self, src: usize, dst: usize, len: usize) {
        if len == 0 {
            return;
        }
        if let Some(Op::Copy {
            src: s,
            dst: d,
            len: l,
        }) = self.plan.ops.last_mut()
        {
            if *s + *l == src && *d + *l == dst {
                *l += len;
                return;
            }
        }
        self.plan.ops.push(Op::Copy { src, dst, len });
    }

    /// `old` at bit `ob` (bitfield width `obf`) → `new` at bit `nb` (`nbf`).
    #[allow(clippy::too_many_arguments)]
    fn slot(
        &mut self,
        old: &Shape,
        ob: u32,
        obf: u32,
        new: &Shape,
        nb: u32,
        nbf: u32,
        path: &str,
    ) -> Result<(), Incompatible> {
        let aligned = obf == 0 && nbf == 0 && ob.is_multiple_of(8) && nb.is_multiple_of(8);
        if aligned && same_shape(old, new) {
            self.copy((ob / 8) as usize, (nb / 8) as usize, old.size() as usize);
            return Ok(());
        }
        let bad = |reason: String| Incompatible {
            path: path.to_string(),
            reason,
        };
        if let (Some(src), Some(dst)) = (int_field(old, ob, obf), int_field(new, nb, nbf)) {
            if src.bits > 64 || dst.bits > 64 {
                return Err(bad(format!(
                    "{} cannot become {} (integers over 64 bits convert only to identical ones)",
                    describe(old),
                    describe(new)
                )));
            }
            let p = self.path(path);
            self.plan
                .changes
                .push(format!("{path}: {} → {}", describe(old), describe(new)));
            self.plan.ops.push(Op::Int { src, dst, path: p });
            return Ok(());
        }
        if !aligned {
            return Err(bad(format!(
                "bitfield {} cannot become {}",
                describe(old),
                describe(new)
            )));
        }
        match (old, new) {
            (Shape::Struct { members: om, .. }, Shape::Struct { members: nm, .. }) => {
                if union_like(om) || union_like(nm) {
                    return Err(bad("unions convert only to identical unions".into()));
                }
                self.members(om, ob, nm, nb, path)
            }
            (Shape::Array { elem: oe, len: ol }, Shape::Array { elem: ne, len: nl }) => {
                self.array(oe, *ol, ob, ne, *nl, nb, path)
            }
            _ => Err(bad(format!(
                "{} cannot become {}",
                describe(old),
                describe(new)
            ))),
        }
    }

    fn members(
        &mut self,
        om: &[Member],
        ob: u32,
        nm: &[Member],
        nb: u32,
        path: &str,
    ) -> Result<(), Incompatible> {
        let join = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        // Anonymous members pair up by their order among anonymous members.
        let anon = |ms: &[Member], i: usize| ms[..i].iter().filter(|m| m.name.is_empty()).count();
        let find = |ms: &'_ [Member], m: &Member, i: usize| -> Option<usize> {
            if m.name.is_empty() {
                let k = anon(nm, i);
                ms.iter()
                    .enumerate()
                    .filter(|(_, o)| o.name.is_empty())
                    .nth(k)
                    .map(|(j, _)| j)
            } else {
                ms.iter().position(|o| o.name == m.name)
            }
        };
        let mut used = vec![false; om.len()];
        for (i, n) in nm.iter().enumerate() {
            let p = join(&n.name);
            match find(om, n, i) {
                Some(j) => {
                    used[j] = true;
                    let o = &om[j];
                    self.slot(
                        &o.shape,
                        ob + o.bit_offset,
                        o.bitfield_size,
                        &n.shape,
                        nb + n.bit_offset,
                        n.bitfield_size,
                        &p,
                    )?;
                }
                None => self.plan.changes.push(format!("+{p} (zero)")),
            }
        }
        for (o, _) in om.iter().zip(&used).filter(|(_, u)| !**u) {
            self.plan.lossy = true;
            self.plan
                .changes
                .push(format!("-{} (dropped)", join(&o.name)));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn array(
        &mut self,
        oe: &Shape,
        ol: u32,
        ob: u32,
        ne: &Shape,
        nl: u32,
        nb: u32,
        path: &str,
    ) -> Result<(), Incompatible> {
        let (os, ns) = (oe.size() * 8, ne.size() * 8);
        let common = ol.min(nl);
        for i in 0..common {
            self.slot(
                oe,
                ob + i * os,
                0,
                ne,
                nb + i * ns,
                0,
                &format!("{path}[{i}]"),
            )?;
        }
        if nl > ol {
            self.plan
                .changes
                .push(format!("+{path}[{ol}..{nl}] (zero)"));
        }
        if ol > nl {
            let p = self.path(&format!("{path}[{nl}..{ol}]"));
            self.plan
                .changes
                .push(format!("{path}[{nl}..{ol}]: dropped, must be zero"));
            self.plan.ops.push(Op::MustBeZero {
                src: ((ob + nl * os) / 8) as usize,
                len: ((ol - nl) * os / 8) as usize,
                path: p,
            });
        }
        Ok(())
    }
}

/// Compiles the conversion of `old` into `new`; `root` prefixes member paths.
pub(super) fn compile(old: &Shape, new: &Shape, root: &str) -> Result<Plan, Incompatible> {
    let mut b = Builder {
        plan: Plan::default(),
    };
    if same_shape(old, new) {
        b.plan.identity = true;
        b.copy(0, 0, old.size() as usize);
        return Ok(b.plan);
    }
    b.slot(old, 0, 0, new, 0, 0, root)?;
    Ok(b.plan)
}

fn read_bits(buf: &[u8], f: IntField) -> i128 {
    let raw: u64 = if f.bit_off.is_multiple_of(8) && matches!(f.bits, 8 | 16 | 32 | 64) {
        let at = (f.bit_off / 8) as usize;
        let mut b = [0u8; 8];
        let n = (f.bits / 8) as usize;
        b[..n].copy_from_slice(&buf[at..at + n]);
        // Map memory is native-endian; widen the n bytes in place.
        if cfg!(target_endian = "little") {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b) >> (64 - f.bits)
        }
    } else {
        // Bitfields: BTF bit offsets count from the LSB of byte 0 (little-endian).
        let mut v = 0u64;
        for i in 0..f.bits {
            let bit = f.bit_off + i;
            if (buf[(bit / 8) as usize] >> (bit % 8)) & 1 == 1 {
                v |= 1 << i;
            }
        }
        v
    };
    if f.signed && (raw >> (f.bits - 1)) & 1 == 1 {
        // Sign-extend from `bits`.
        (raw as i128) - (1i128 << f.bits)
    } else {
        raw as i128
    }
}

fn fits(v: i128, f: IntField) -> bool {
    if f.signed {
        let half = 1i128 << (f.bits - 1);
        (-half..half).contains(&v)
    } else {
        (0..1i128 << f.bits).contains(&v)
    }
}

fn write_bits(buf: &mut [u8], f: IntField, v: i128) {
    let raw = v as u64;
    if f.bit_off.is_multiple_of(8) && matches!(f.bits, 8 | 16 | 32 | 64) {
        let at = (f.bit_off / 8) as usize;
        let n = (f.bits / 8) as usize;
        if cfg!(target_endian = "little") {
            buf[at..at + n].copy_from_slice(&raw.to_le_bytes()[..n]);
        } else {
            buf[at..at + n].copy_from_slice(&raw.to_be_bytes()[8 - n..]);
        }
    } else {
        for i in 0..f.bits {
            let bit = f.bit_off + i;
            let byte = &mut buf[(bit / 8) as usize];
            if (raw >> i) & 1 == 1 {
                *byte |= 1 << (bit % 8);
            } else {
                *byte &= !(1 << (bit % 8));
            }
        }
    }
}

fn int_name(f: IntField) -> String {
    format!("{}{}", if f.signed { 's' } else { 'u' }, f.bits)
}

impl Plan {
    /// Converts `src` into `dst`; `dst` must be zeroed and both sized for
    /// their shapes (guaranteed by the converter).
    pub(super) fn apply(&self, src: &[u8], dst: &mut [u8]) -> Result<(), Fault> {
        for op in &self.ops {
            match *op {
                Op::Copy {
                    src: s,
                    dst: d,
                    len,
                } => {
                    dst[d..d + len].copy_from_slice(&src[s..s + len]);
                }
                Op::Int {
                    src: sf,
                    dst: df,
                    path,
                } => {
                    let v = read_bits(src, sf);
                    if !fits(v, df) {
                        return Err(Fault {
                            path: self.paths[path].clone(),
                            value: v.to_string(),
                            target: int_name(df),
                        });
                    }
                    write_bits(dst, df, v);
                }
                Op::MustBeZero { src: s, len, path } => {
                    if let Some(b) = src[s..s + len].iter().position(|&b| b != 0) {
                        return Err(Fault {
                            path: self.paths[path].clone(),
                            value: format!("non-zero byte {} at offset {}", src[s + b], s + b),
                            target: "the shorter array".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
