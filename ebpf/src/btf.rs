//! A small reader for BTF (BPF Type Format): enough to describe the layout of
//! map keys and values (struct members with names, offsets, sizes, bitfields,
//! nested structs and arrays). Used to prove the Rust mirrors match the C
//! structs, and to compare map layouts across agent builds.

use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The blob is shorter than a header or a section it declares.
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    /// Wrong magic number.
    #[error("not BTF (magic {0:#x})")]
    BadMagic(u16),
    /// A kind this reader does not know.
    #[error("unknown BTF kind {kind} for type {id}")]
    UnknownKind {
        /// Type id.
        id: u32,
        /// Kind number.
        kind: u32,
    },
    /// The ELF object could not be read or has no `.BTF` section.
    #[error("ELF: {0}")]
    Elf(String),
    /// A type reference points nowhere or loops.
    #[error("bad type reference {0}")]
    BadType(u32),
}

/// One parsed BTF type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    /// Id 0.
    Void,
    /// Integer of `size` bytes (`bits` wide).
    Int {
        /// Type name.
        name: String,
        /// Size in bytes.
        size: u32,
        /// Width in bits.
        bits: u32,
        /// Signed integer.
        signed: bool,
    },
    /// Array of `len` elements.
    Array {
        /// Element type id.
        elem: u32,
        /// Element count.
        len: u32,
    },
    /// Struct or union.
    Composite {
        /// Type name (may be empty).
        name: String,
        /// Size in bytes.
        size: u32,
        /// Union rather than struct.
        union: bool,
        /// Members in declaration order.
        members: Vec<RawMember>,
    },
    /// Enum of `size` bytes.
    Enum {
        /// Type name.
        name: String,
        /// Size in bytes.
        size: u32,
    },
    /// Typedef / const / volatile / restrict / type tag: transparent.
    Alias {
        /// Name (for typedefs).
        name: String,
        /// Target type id.
        target: u32,
    },
    /// Pointer.
    Ptr,
    /// Anything else (functions, variables, sections, floats).
    Other {
        /// Type name.
        name: String,
        /// Size in bytes if the kind has one.
        size: u32,
    },
}

/// A struct member as stored in BTF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMember {
    /// Member name.
    pub name: String,
    /// Member type id.
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
    /// Bitfield width, 0 when not a bitfield.
    pub bitfield_size: u32,
}

/// Flattened description of one member of a key or value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Member name.
    pub name: String,
    /// Byte offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Bitfield width, 0 when not a bitfield.
    pub bitfield_size: u32,
    /// Bit offset within the struct.
    pub bit_offset: u32,
    /// Shape of the member's type.
    pub shape: Shape,
}

/// The shape of a type, independent of type ids: comparable across objects.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shape {
    /// Integer.
    Int {
        /// Size in bytes.
        size: u32,
        /// Signed.
        signed: bool,
    },
    /// Array.
    Array {
        /// Element shape.
        elem: Box<Shape>,
        /// Element count.
        len: u32,
    },
    /// Struct or union with its members.
    Struct {
        /// Type name.
        name: String,
        /// Size in bytes.
        size: u32,
        /// Members.
        members: Vec<Member>,
    },
    /// Enum.
    Enum {
        /// Size in bytes.
        size: u32,
    },
    /// Anything else, by size.
    Opaque {
        /// Size in bytes.
        size: u32,
    },
}

impl Shape {
    /// Size in bytes.
    pub fn size(&self) -> u32 {
        match self {
            Shape::Int { size, .. } | Shape::Enum { size } | Shape::Opaque { size } => *size,
            Shape::Array { elem, len } => elem.size() * len,
            Shape::Struct { size, .. } => *size,
        }
    }

    /// Members when this is a struct.
    pub fn members(&self) -> &[Member] {
        match self {
            Shape::Struct { members, .. } => members,
            _ => &[],
        }
    }
}

/// A parsed BTF blob.
#[derive(Clone, Debug)]
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(off))
}

fn str_at(strings: &[u8], off: u32) -> Result<String, BtfError> {
    let start = off as usize;
    let tail = strings.get(start..).ok_or(BtfError::Truncated(start))?;
    let end = tail
        .iter()
        .position(|&c| c == 0)
        .ok_or(BtfError::Truncated(start))?;
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

impl Btf {
    /// Parses a raw little-endian BTF blob (as in `.BTF` or from the kernel).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let magic = b
            .get(0..2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
            .ok_or(BtfError::Truncated(0))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_start = hdr_len + type_off;
        let tsec = b
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::Truncated(types_start))?;
        let str_start = hdr_len + str_off;
        let strings = b
            .get(str_start..str_start + str_len)
            .ok_or(BtfError::Truncated(str_start))?;

        let mut types = vec![Type::Void];
        let mut by_name = HashMap::new();
        let mut off = 0usize;
        while off < tsec.len() {
            let id = types.len() as u32;
            let name = str_at(strings, u32_at(tsec, off)?)?;
            let info = u32_at(tsec, off + 4)?;
            let size_or_type = u32_at(tsec, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    let enc = u32_at(tsec, off)?;
                    off += 4;
                    Type::Int {
                        name: name.clone(),
                        size: size_or_type,
                        bits: enc & 0xff,
                        signed: (enc >> 24) & 1 == 1,
                    }
                }
                KIND_PTR => Type::Ptr,
                KIND_ARRAY => {
                    let elem = u32_at(tsec, off)?;
                    let len = u32_at(tsec, off + 8)?;
                    off += 12;
                    Type::Array { elem, len }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let mname = str_at(strings, u32_at(tsec, off)?)?;
                        let type_id = u32_at(tsec, off + 4)?;
                        let raw_off = u32_at(tsec, off + 8)?;
                        off += 12;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_off & 0xff_ffff, raw_off >> 24)
                        } else {
                            (raw_off, 0)
                        };
                        members.push(RawMember {
                            name: mname,
                            type_id,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    Type::Composite {
                        name: name.clone(),
                        size: size_or_type,
                        union: kind == KIND_UNION,
                        members,
                    }
                }
                KIND_ENUM => {
                    off += 8 * vlen;
                    Type::Enum {
                        name: name.clone(),
                        size: size_or_type,
                    }
                }
                KIND_ENUM64 => {
                    off += 12 * vlen;
                    Type::Enum {
                        name: name.clone(),
                        size: size_or_type,
                    }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        name: name.clone(),
                        target: size_or_type,
                    }
                }
                KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other {
                    name: name.clone(),
                    size: size_or_type,
                },
                KIND_FUNC_PROTO => {
                    off += 8 * vlen;
                    Type::Other {
                        name: name.clone(),
                        size: 0,
                    }
                }
                KIND_VAR | KIND_DECL_TAG => {
                    off += 4;
                    Type::Other {
                        name: name.clone(),
                        size: 0,
                    }
                }
                KIND_DATASEC => {
                    off += 12 * vlen;
                    Type::Other {
                        name: name.clone(),
                        size: size_or_type,
                    }
                }
                other => return Err(BtfError::UnknownKind { id, kind: other }),
            };
            if off > tsec.len() {
                return Err(BtfError::Truncated(types_start + off));
            }
            if !name.is_empty()
                && matches!(
                    ty,
                    Type::Composite { .. } | Type::Int { .. } | Type::Alias { .. }
                )
            {
                by_name.entry(name).or_insert(id);
            }
            types.push(ty);
        }
        Ok(Self { types, by_name })
    }

    /// Reads the `.BTF` section of an ELF object.
    pub fn from_elf(elf: &[u8]) -> Result<Self, BtfError> {
        use object::{Object, ObjectSection};
        let file = object::File::parse(elf).map_err(|e| BtfError::Elf(e.to_string()))?;
        let section = file
            .section_by_name(".BTF")
            .ok_or_else(|| BtfError::Elf("no .BTF section".into()))?;
        let data = section.data().map_err(|e| BtfError::Elf(e.to_string()))?;
        Self::parse(data)
    }

    /// The type with this id.
    pub fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadType(id))
    }

    /// Id of the first struct, int or typedef with this name.
    pub fn id_by_name(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Shape of a type, resolving aliases and flattening nested members.
    pub fn shape(&self, id: u32) -> Result<Shape, BtfError> {
        self.shape_depth(id, 0)
    }

    /// Shape of the type with this name.
    pub fn shape_by_name(&self, name: &str) -> Option<Shape> {
        self.id_by_name(name).and_then(|id| self.shape(id).ok())
    }

    fn shape_depth(&self, id: u32, depth: u32) -> Result<Shape, BtfError> {
        if depth > 32 {
            return Err(BtfError::BadType(id));
        }
        Ok(match self.get(id)? {
            Type::Void => Shape::Opaque { size: 0 },
            Type::Int { size, signed, .. } => Shape::Int {
                size: *size,
                signed: *signed,
            },
            Type::Array { elem, len } => Shape::Array {
                elem: Box::new(self.shape_depth(*elem, depth + 1)?),
                len: *len,
            },
            Type::Composite {
                name,
                size,
                members,
                ..
            } => {
                let mut out = Vec::with_capacity(members.len());
                for m in members {
                    let shape = self.shape_depth(m.type_id, depth + 1)?;
                    let size = if m.bitfield_size > 0 {
                        m.bitfield_size.div_ceil(8)
                    } else {
                        shape.size()
                    };
                    out.push(Member {
                        name: m.name.clone(),
                        offset: m.bit_offset / 8,
                        size,
                        bitfield_size: m.bitfield_size,
                        bit_offset: m.bit_offset,
                        shape,
                    });
                }
                Shape::Struct {
                    name: name.clone(),
                    size: *size,
                    members: out,
                }
            }
            Type::Enum { size, .. } => Shape::Enum { size: *size },
            Type::Alias { target, .. } => self.shape_depth(*target, depth + 1)?,
            Type::Ptr => Shape::Opaque { size: 8 },
            Type::Other { size, .. } => Shape::Opaque { size: *size },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(&[1, 2, 3]),
            Err(BtfError::BadMagic(_)) | Err(BtfError::Truncated(_))
        ));
        assert!(matches!(
            Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]),
            Err(BtfError::Truncated(_))
        ));
    }

    #[test]
    fn parses_the_datapath_object() {
        // Layout 1 explicitly: the member order checked below is layout 1's.
        let v1 = crate::object_of_layout(1).expect("layout 1 is built");
        let btf = Btf::from_elf(v1).expect("object has BTF");
        let shape = btf
            .shape_by_name("endpoint_key")
            .expect("endpoint_key in BTF");
        let names: Vec<_> = shape.members().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["service_id", "prio", "backend_index"]);
    }
}
