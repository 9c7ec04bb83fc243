//! Encodes key/value [`Shape`]s as a minimal BTF blob, so maps created by
//! [`create_map`](super::create_map) carry BTF like aya's do and can be read
//! back with [`MapLayout::from_fd`](super::MapLayout::from_fd).

use std::collections::HashMap;

use baton_ebpf::btf::Shape;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_ENUM: u32 = 6;

/// A shape BTF cannot express.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot encode {0} as BTF")]
pub struct Unencodable(pub String);

#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
    ints: HashMap<(u32, bool), u32>,
    names: HashMap<String, u32>,
}

impl Builder {
    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&off) = self.names.get(s) {
            return off;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        self.names.insert(s.to_string(), off);
        off
    }

    fn push(&mut self, words: &[u32]) -> u32 {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, size: u32, signed: bool) -> Result<u32, Unencodable> {
        if !matches!(size, 1 | 2 | 4 | 8 | 16) {
            return Err(Unencodable(format!("a {size}-byte integer")));
        }
        if let Some(&id) = self.ints.get(&(size, signed)) {
            return Ok(id);
        }
        let name = self.str(&format!("__{}{}", if signed { 's' } else { 'u' }, size * 8));
        let encoding = (u32::from(signed) << 24) | (size * 8);
        let id = self.push(&[name, KIND_INT << 24, size, encoding]);
        self.ints.insert((size, signed), id);
        Ok(id)
    }

    fn shape(&mut self, s: &Shape) -> Result<u32, Unencodable> {
        match s {
            Shape::Int { size, signed } => self.int(*size, *signed),
            Shape::Enum { size } => Ok(self.push(&[0, KIND_ENUM << 24, *size])),
            Shape::Opaque { size } if *size > 0 => {
                let elem = self.int(1, false)?;
                self.array(elem, *size)
            }
            Shape::Opaque { .. } => Err(Unencodable("void".into())),
            Shape::Array { elem, len } => {
                let elem = self.shape(elem)?;
                self.array(elem, *len)
            }
            Shape::Struct {
                name,
                size,
                members,
            } => {
                let kind_flag = members.iter().any(|m| m.bitfield_size > 0);
                let mut words = Vec::with_capacity(3 * members.len());
                for m in members {
                    let ty = self.shape(&m.shape)?;
                    let off = if kind_flag {
                        (m.bitfield_size << 24) | m.bit_offset
                    } else {
                        m.bit_offset
                    };
                    words.extend([self.str(&m.name), ty, off]);
                }
                let info =
                    (u32::from(kind_flag) << 31) | (KIND_STRUCT << 24) | members.len() as u32;
                let mut rec = vec![self.str(name), info, *size];
                rec.extend(words);
                Ok(self.push(&rec))
            }
        }
    }

    fn array(&mut self, elem: u32, len: u32) -> Result<u32, Unencodable> {
        let index = self.int(4, false)?;
        Ok(self.push(&[0, KIND_ARRAY << 24, 0, elem, index, len]))
    }
}

/// The BTF blob plus the ids of `key` and `value` in it.
pub fn encode(key: &Shape, value: &Shape) -> Result<(Vec<u8>, u32, u32), Unencodable> {
    let mut b = Builder {
        strings: vec![0],
        ..Default::default()
    };
    let k = b.shape(key)?;
    let v = b.shape(value)?;
    let mut out = Vec::with_capacity(24 + b.types.len() + b.strings.len());
    out.extend_from_slice(&0xeb9fu16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for w in [
        24,
        0,
        b.types.len() as u32,
        b.types.len() as u32,
        b.strings.len() as u32,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&b.types);
    out.extend_from_slice(&b.strings);
    Ok((out, k, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_ebpf::btf::Btf;

    #[test]
    fn every_build_shape_round_trips() {
        let btf = Btf::from_elf(baton_ebpf::object()).expect("object BTF");
        for spec in baton_ebpf::MAPS.iter() {
            let key = btf.shape_by_name(spec.key_type).expect("key type");
            let value = btf.shape_by_name(spec.value_type).expect("value type");
            let (blob, k, v) = encode(&key, &value).expect("encodable");
            let back = Btf::parse(&blob).expect("parses");
            assert_eq!(back.shape(k).expect("key"), key, "{}", spec.name);
            assert_eq!(back.shape(v).expect("value"), value, "{}", spec.name);
        }
    }
}
