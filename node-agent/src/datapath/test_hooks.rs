//! Test-only faults in the load path, compiled with the `test-hooks` cargo
//! feature only. The crate's own tests turn the feature on (the
//! dev-dependency on itself in Cargo.toml); `cargo build` never does, so a
//! production binary has none of this.
//!
//! `BATON_TEST_BREAK_PROGRAM=<program>` (e.g. `baton_connect4`): the object
//! handed to aya is this build's own with that program's first instruction
//! replaced by `r0 = *(u32 *)(r2 + 0)`. r2 is not initialised at a
//! program's entry, so the kernel's verifier itself rejects the program
//! (`R2 !read_ok`) through the normal load path, log and all; nothing in
//! the agent pretends.
//!
//! `BATON_TEST_REFUSE_ONE_IN=<n>`: the datapath refuses one in `n` connects
//! to a VIP that has endpoints, as if it had none (counted `no_endpoint`);
//! the agent sets the object's `test_refuse_one_in` global at load (it
//! exists only in objects compiled with baton-ebpf's `test-hooks`). 0 or
//! unset: off. The canary's tests use it to hand over to a build that
//! disrupts traffic.

use super::load::LoadError;

/// Names the program whose first instruction is broken.
pub const BREAK_ENV: &str = "BATON_TEST_BREAK_PROGRAM";

/// Makes the datapath refuse one in N connects to a VIP with endpoints.
pub const REFUSE_ENV: &str = "BATON_TEST_REFUSE_ONE_IN";

/// [`REFUSE_ENV`] as the value of the object's `test_refuse_one_in` (0: off).
pub fn refuse_one_in() -> Result<u32, LoadError> {
    let Ok(v) = std::env::var(REFUSE_ENV) else {
        return Ok(0);
    };
    let n: u32 = v
        .trim()
        .parse()
        .map_err(|e| LoadError::Hook(format!("{REFUSE_ENV}={v:?}: {e}")))?;
    if n > 0 {
        tracing::warn!(
            one_in = n,
            "{REFUSE_ENV}: the datapath refuses a share of connects (test build)"
        );
    }
    Ok(n)
}

/// `BPF_LDX | BPF_MEM | BPF_W`, dst r0, src r2, offset 0, imm 0.
const READ_UNINIT_R2: [u8; 8] = [0x61, 0x20, 0, 0, 0, 0, 0, 0];
/// `BPF_LD | BPF_IMM | BPF_DW` (two slots, relocated by aya for maps).
const LD_IMM64: u8 = 0x18;
/// `BPF_JMP | BPF_CALL` (relocated for bpf-to-bpf calls).
const CALL: u8 = 0x85;

/// A copy of the object, 8-byte aligned for the ELF parser.
pub struct Broken {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Broken {
    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// The object with [`BREAK_ENV`]'s program broken, `None` when it is unset.
pub fn broken_object() -> Result<Option<Broken>, LoadError> {
    let Ok(program) = std::env::var(BREAK_ENV) else {
        return Ok(None);
    };
    let object = baton_ebpf::object();
    let at = first_insn(object, &program).map_err(LoadError::Hook)?;
    let insn = &object[at..at + 8];
    if insn[0] == LD_IMM64 || insn[0] == CALL {
        return Err(LoadError::Hook(format!(
            "{program}'s first instruction (opcode {:#04x}) is relocated; not breaking it",
            insn[0]
        )));
    }
    // Aligned without unsafe: start where the allocation is 8-aligned.
    let mut buf = vec![0u8; object.len() + 8];
    let start = buf.as_ptr().align_offset(8).min(8);
    buf[start..start + object.len()].copy_from_slice(object);
    buf[start + at..start + at + 8].copy_from_slice(&READ_UNINIT_R2);
    tracing::warn!(
        program,
        "{BREAK_ENV}: loading a deliberately broken program (test build)"
    );
    Ok(Some(Broken {
        buf,
        start,
        len: object.len(),
    }))
}

/// File offset of the first instruction of function `program`.
fn first_insn(elf: &[u8], program: &str) -> Result<usize, String> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(elf).map_err(|e| e.to_string())?;
    let sym = file
        .symbol_by_name(program)
        .ok_or_else(|| format!("no symbol {program} in the object"))?;
    let index = sym
        .section_index()
        .ok_or_else(|| format!("symbol {program} has no section"))?;
    let section = file.section_by_index(index).map_err(|e| e.to_string())?;
    let (offset, size) = section
        .file_range()
        .ok_or_else(|| format!("section of {program} has no file data"))?;
    // In a relocatable object a symbol's value is its offset in the section.
    let within = sym.address();
    if within + 8 > size {
        return Err(format!("{program} lies outside its section"));
    }
    usize::try_from(offset + within).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_instruction_of_each_program_can_be_broken() {
        for (name, _) in super::super::load::PROGRAMS {
            let at = first_insn(baton_ebpf::object(), name).expect(name);
            let op = baton_ebpf::object()[at];
            assert!(op != LD_IMM64 && op != CALL, "{name}: opcode {op:#04x}");
        }
        assert!(first_insn(baton_ebpf::object(), "no_such_program").is_err());
    }
}
