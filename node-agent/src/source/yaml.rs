//! A pull parser over libyaml's event stream (the same parser serde_yaml
//! uses, so the accepted syntax does not change). serde_yaml loads every
//! event of a document before deserializing (about 20x the text in memory,
//! 1.4 GB for a 50 MB flow-style file); reading events one at a time lets
//! the services reader build its structures as it goes and stop at the
//! first event the schema has no place for, so deep nesting or an alias
//! bomb is rejected after a few events instead of being expanded.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::ptr::addr_of_mut;

use unsafe_libyaml as unsafe_yaml;

/// Where an event starts (0-based line and column, byte offset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// 0-based line.
    pub line: usize,
    /// 0-based column.
    pub column: usize,
}

impl Mark {
    fn of(m: &unsafe_yaml::yaml_mark_t) -> Self {
        Self {
            line: usize::try_from(m.line).unwrap_or(usize::MAX),
            column: usize::try_from(m.column).unwrap_or(usize::MAX),
        }
    }

    /// 1-based line, as editors number them.
    pub fn line1(&self) -> usize {
        self.line.saturating_add(1)
    }
}

/// How a scalar was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Unquoted: subject to null / integer resolution.
    Plain,
    /// Quoted or block (`|`, `>`): always a string.
    Quoted,
}

/// One YAML event.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Start of the stream.
    StreamStart,
    /// End of the stream.
    StreamEnd,
    /// Start of a document.
    DocumentStart,
    /// End of a document.
    DocumentEnd,
    /// `*alias`.
    Alias,
    /// A scalar; `decorated` when it carries an anchor or a tag.
    Scalar {
        /// Text after escapes and folding.
        value: String,
        /// Plain or quoted.
        style: Style,
        /// Has an `&anchor` or a `!tag`.
        decorated: bool,
    },
    /// `[` or a block sequence; `decorated` as for scalars.
    SequenceStart {
        /// Has an `&anchor` or a `!tag`.
        decorated: bool,
    },
    /// End of a sequence.
    SequenceEnd,
    /// `{` or a block mapping; `decorated` as for scalars.
    MappingStart {
        /// Has an `&anchor` or a `!tag`.
        decorated: bool,
    },
    /// End of a mapping.
    MappingEnd,
}

/// libyaml's syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}{}", .context.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct SyntaxError {
    /// What is wrong.
    pub problem: String,
    /// While parsing what.
    pub context: Option<String>,
    /// Where.
    pub mark: Mark,
}

/// The parser state; libyaml keeps pointers into it, so it lives in a box
/// and never moves.
struct Pinned<'a> {
    sys: unsafe_yaml::yaml_parser_t,
    _input: &'a [u8],
}

/// Events of a UTF-8 text, one at a time.
pub struct Parser<'a> {
    pin: Box<MaybeUninit<Pinned<'a>>>,
    done: bool,
}

impl<'a> Parser<'a> {
    /// A parser over `input` (borrowed for the parser's lifetime).
    pub fn new(input: &'a str) -> Self {
        let mut pin: Box<MaybeUninit<Pinned<'a>>> = Box::new(MaybeUninit::uninit());
        // SAFETY: the parser struct is initialized by yaml_parser_initialize
        // (which zeroes it first) before any other use; the input outlives
        // the parser through 'a and is never moved (it is borrowed).
        unsafe {
            let p = pin.as_mut_ptr();
            let parser = addr_of_mut!((*p).sys);
            // Initialization only allocates libyaml's buffers; an allocation
            // failure aborts the process like any Rust allocation.
            let _ = unsafe_yaml::yaml_parser_initialize(parser);
            unsafe_yaml::yaml_parser_set_encoding(parser, unsafe_yaml::YAML_UTF8_ENCODING);
            unsafe_yaml::yaml_parser_set_input_string(parser, input.as_ptr(), input.len() as _);
            addr_of_mut!((*p)._input).write(input.as_bytes());
        }
        Self { pin, done: false }
    }

    fn raw(&mut self) -> *mut unsafe_yaml::yaml_parser_t {
        // SAFETY: initialized in `new`.
        unsafe { addr_of_mut!((*self.pin.as_mut_ptr()).sys) }
    }

    /// The next event and where it starts.
    pub fn next_event(&mut self) -> Result<(Event, Mark), SyntaxError> {
        let parser = self.raw();
        let mut ev = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
        // SAFETY: parser is initialized; the event is written by
        // yaml_parser_parse on success and deleted exactly once after its
        // contents were copied out.
        unsafe {
            if self.done || (&*parser).error != unsafe_yaml::YAML_NO_ERROR {
                return Err(Self::error(parser));
            }
            let evp = ev.as_mut_ptr();
            if unsafe_yaml::yaml_parser_parse(parser, evp).fail {
                self.done = true;
                return Err(Self::error(parser));
            }
            let out = convert(&*evp);
            let mark = Mark::of(&(*evp).start_mark);
            unsafe_yaml::yaml_event_delete(evp);
            Ok((out, mark))
        }
    }

    /// # Safety
    /// `parser` must be initialized.
    unsafe fn error(parser: *const unsafe_yaml::yaml_parser_t) -> SyntaxError {
        // SAFETY: libyaml's problem/context are static NUL-terminated strings or null.
        unsafe {
            let text = |p: *const std::ffi::c_char| {
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            };
            let parser = &*parser;
            SyntaxError {
                problem: text(parser.problem).unwrap_or_else(|| "invalid YAML".to_string()),
                context: text(parser.context),
                mark: Mark::of(&parser.problem_mark),
            }
        }
    }
}

/// # Safety
/// `ev` must be an event filled by yaml_parser_parse.
unsafe fn convert(ev: &unsafe_yaml::yaml_event_t) -> Event {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match ev.type_ {
            unsafe_yaml::YAML_STREAM_START_EVENT => Event::StreamStart,
            unsafe_yaml::YAML_STREAM_END_EVENT => Event::StreamEnd,
            unsafe_yaml::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
            unsafe_yaml::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
            unsafe_yaml::YAML_ALIAS_EVENT => Event::Alias,
            unsafe_yaml::YAML_SCALAR_EVENT => {
                let s = &ev.data.scalar;
                let bytes = if s.value.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(s.value, s.length as usize)
                };
                Event::Scalar {
                    // The input is UTF-8 and libyaml emits UTF-8.
                    value: String::from_utf8_lossy(bytes).into_owned(),
                    style: if s.style == unsafe_yaml::YAML_PLAIN_SCALAR_STYLE {
                        Style::Plain
                    } else {
                        Style::Quoted
                    },
                    decorated: !s.anchor.is_null() || !s.tag.is_null(),
                }
            }
            unsafe_yaml::YAML_SEQUENCE_START_EVENT => {
                let s = &ev.data.sequence_start;
                Event::SequenceStart {
                    decorated: !s.anchor.is_null() || !s.tag.is_null(),
                }
            }
            unsafe_yaml::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
            unsafe_yaml::YAML_MAPPING_START_EVENT => {
                let s = &ev.data.mapping_start;
                Event::MappingStart {
                    decorated: !s.anchor.is_null() || !s.tag.is_null(),
                }
            }
            unsafe_yaml::YAML_MAPPING_END_EVENT => Event::MappingEnd,
            // YAML_NO_EVENT is never returned on success.
            _ => Event::StreamEnd,
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        let parser = self.raw();
        // SAFETY: initialized in `new`, deleted once.
        unsafe { unsafe_yaml::yaml_parser_delete(parser) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<Event> {
        let mut p = Parser::new(text);
        let mut out = Vec::new();
        loop {
            let (e, _) = p.next_event().expect("valid yaml");
            let end = e == Event::StreamEnd;
            out.push(e);
            if end {
                return out;
            }
        }
    }

    #[test]
    fn scalars_styles_and_decorations() {
        let ev = events("a: [\"1\", 2, &x b, *x]\n");
        assert!(ev.contains(&Event::Scalar {
            value: "1".into(),
            style: Style::Quoted,
            decorated: false
        }));
        assert!(ev.contains(&Event::Scalar {
            value: "b".into(),
            style: Style::Plain,
            decorated: true
        }));
        assert!(ev.contains(&Event::Alias));
    }

    #[test]
    fn syntax_error_has_a_mark() {
        let mut p = Parser::new("a: 1\nb: [\n");
        let err = loop {
            match p.next_event() {
                Ok((Event::StreamEnd, _)) => panic!("must fail"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(err.mark.line >= 1, "{err:?}");
        // A failed parser keeps failing instead of touching freed state.
        assert!(p.next_event().is_err());
    }
}
