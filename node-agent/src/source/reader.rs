//! Builds the services document straight from the YAML event stream, with
//! the line of every field, so that:
//! - memory is the text plus the result (no event buffer, no value tree);
//! - any collection where the schema has none (deep nesting) and any anchor,
//!   alias or tag (the schema never needs them, and aliases are how a small
//!   file expands into a huge one) is rejected at its first event, so the
//!   nesting depth the parser ever reaches is the schema's (5 levels);
//! - a duplicate key, an unknown field or a bad value is reported at its own
//!   line, in flow style as in block style;
//! - a validation error's field path maps to a line in O(1) (the lines were
//!   recorded while reading), however many errors there are.
//!
//! Only a complete document is accepted: an empty or comment-only file, a
//! top-level mapping without `services`, or `services:` with no value is an
//! error; "no services" is only an explicit `services: []`.

use std::net::IpAddr;

use baton_ebpf::LbPolicy;

use super::yaml::{Event, Mark, Parser, Style, SyntaxError};
use crate::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};

/// Why a text is not a services document. Every variant but `Syntax` and
/// `Empty` names the field path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not YAML.
    #[error("{0}")]
    Syntax(#[from] SyntaxError),
    /// No document at all (0 bytes, only comments or blank lines): never
    /// taken as "no services", it is what a reader sees mid-rewrite.
    #[error("no document (empty or only comments); write `services: []` for no services")]
    Empty,
    /// A second `---` document.
    #[error("more than one YAML document")]
    MultipleDocuments,
    /// More services than the service map holds: parsing stops there, so
    /// memory follows the map's capacity, not the file's size.
    #[error("services: more than {limit} services (the service map's capacity)")]
    TooManyServices {
        /// The capacity.
        limit: usize,
    },
    /// `&anchor`, `*alias` or `!tag`.
    #[error("{path}: anchors, aliases and tags are not supported")]
    Decorated {
        /// Field path.
        path: String,
    },
    /// The wrong kind of node.
    #[error("{path}: expected {expected}, found {found}")]
    Type {
        /// Field path.
        path: String,
        /// What the schema wants.
        expected: &'static str,
        /// What the file has.
        found: &'static str,
    },
    /// `key:` with no value where a value is required.
    #[error("{path}: no value (null){hint}")]
    Null {
        /// Field path.
        path: String,
        /// How to write an empty list, when that is what was meant.
        hint: &'static str,
    },
    /// A key the schema does not have.
    #[error("{path}: unknown field `{field}`, expected one of {expected}")]
    UnknownField {
        /// Path of the mapping.
        path: String,
        /// The key.
        field: String,
        /// The keys it may have.
        expected: &'static str,
    },
    /// A key given twice in one mapping.
    #[error("{path}: duplicate key `{field}`")]
    DuplicateKey {
        /// Path of the mapping.
        path: String,
        /// The key.
        field: String,
    },
    /// A required key is absent.
    #[error("{path}: missing field `{field}`")]
    MissingField {
        /// Path of the mapping.
        path: String,
        /// The key.
        field: &'static str,
    },
    /// An integer out of range or not an integer.
    #[error("{path}: invalid value `{value}`, expected an integer in {range}")]
    Integer {
        /// Field path.
        path: String,
        /// The text.
        value: String,
        /// The accepted range.
        range: &'static str,
    },
    /// Not an IP address.
    #[error("{path}: invalid IP address `{value}`: {source}")]
    Address {
        /// Field path.
        path: String,
        /// The text.
        value: String,
        /// The parse error.
        source: std::net::AddrParseError,
    },
    /// Not one of the policies.
    #[error("{path}: unknown variant `{value}`, expected one of `random`, `strict`, `failover`")]
    Policy {
        /// Field path.
        path: String,
        /// The text.
        value: String,
    },
}

/// A parse error and its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line.
    pub line: usize,
    /// The error.
    pub error: ParseError,
}

/// Lines of one port or endpoint item: the item and each field.
#[derive(Clone, Copy, Debug, Default)]
struct ItemLines {
    item: u32,
    fields: [u32; 3],
}

/// Lines of one service's fields (1-based, in the document it was read from).
#[derive(Clone, Debug, Default)]
pub struct ServiceLines {
    item: u32,
    name: u32,
    vips_key: u32,
    vips: Vec<u32>,
    ports_key: u32,
    ports: Vec<ItemLines>,
    policy: u32,
    endpoints_key: u32,
    endpoints: Vec<ItemLines>,
}

/// Where every field of a parsed document is (1-based lines).
#[derive(Clone, Debug, Default)]
pub struct Lines {
    services_key: u32,
    services: Vec<ServiceLines>,
}

const PORT_FIELDS: [&str; 2] = ["port", "targetPort"];
const ENDPOINT_FIELDS: [&str; 3] = ["address", "port", "priority"];

impl Lines {
    /// The line of a validation path like `services[3].endpoints[1].address`
    /// (the closest enclosing node that has one; 0 when none).
    pub fn of(&self, path: &str) -> usize {
        line_of(path, self.services_key as usize, |i| {
            self.services.get(i).map(|s| (s, 0))
        })
    }

    /// The line of the `services` key (0 when none).
    pub fn services_key(&self) -> usize {
        self.services_key as usize
    }

    /// Each service's lines, in order.
    pub fn into_services(self) -> Vec<ServiceLines> {
        self.services
    }
}

/// [`Lines::of`] for services whose lines are kept apart: `service(i)` gives
/// service `i`'s lines (borrowed or just read) and how many lines to add to
/// them (where the text they were read from starts in the file).
pub fn line_of<L: std::borrow::Borrow<ServiceLines>>(
    path: &str,
    services_key: usize,
    service: impl FnOnce(usize) -> Option<(L, usize)>,
) -> usize {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return services_key;
    };
    let Some((svc, offset)) = index(first).and_then(service) else {
        return services_key;
    };
    // Never 0: a service's own line is always known.
    svc.borrow().of(parts).saturating_add(offset)
}

impl ServiceLines {
    /// The line of the rest of a path below `services[i]` (`parts`: the
    /// field, then the sub-field); at least the service's own line.
    fn of(&self, mut parts: std::str::Split<'_, char>) -> usize {
        let mut best = self.item;
        let Some(field) = parts.next() else {
            return best as usize;
        };
        let (name, idx) = match field.split_once('[') {
            Some((n, _)) => (n, index(field)),
            None => (field, None),
        };
        let (key, list, names): (u32, &[ItemLines], &[&str]) = match name {
            "name" => (self.name, &[], &[]),
            "policy" => (self.policy, &[], &[]),
            "vips" => {
                best = pick(best, self.vips_key);
                if let Some(&l) = idx.and_then(|i| self.vips.get(i)) {
                    best = pick(best, l);
                }
                return best as usize;
            }
            "ports" => (self.ports_key, &self.ports, &PORT_FIELDS),
            "endpoints" => (self.endpoints_key, &self.endpoints, &ENDPOINT_FIELDS),
            _ => (0, &[], &[]),
        };
        best = pick(best, key);
        let Some(item) = idx.and_then(|i| list.get(i)) else {
            return best as usize;
        };
        best = pick(best, item.item);
        if let Some(sub) = parts.next() {
            if let Some(k) = names.iter().position(|n| *n == sub) {
                best = pick(best, item.fields[k]);
            }
        }
        best as usize
    }
}

fn pick(best: u32, line: u32) -> u32 {
    if line == 0 {
        best
    } else {
        line
    }
}

/// `name[3]` → 3.
fn index(seg: &str) -> Option<usize> {
    seg.split_once('[')?.1.strip_suffix(']')?.parse().ok()
}

fn line32(m: Mark) -> u32 {
    u32::try_from(m.line1()).unwrap_or(u32::MAX)
}

fn found(e: &Event) -> &'static str {
    match e {
        Event::Scalar { .. } => "a scalar",
        Event::SequenceStart { .. } => "a sequence",
        Event::MappingStart { .. } => "a mapping",
        Event::Alias => "an alias",
        _ => "the end of the document",
    }
}

fn is_null(value: &str, style: Style) -> bool {
    style == Style::Plain && matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

/// A plain YAML 1.2 integer (decimal, `0x`, `0o`) within `max`.
fn integer(value: &str, style: Style, max: u64) -> Option<u64> {
    if style != Style::Plain {
        return None;
    }
    let v = value.strip_prefix('+').unwrap_or(value);
    let n = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = v.strip_prefix("0o") {
        u64::from_str_radix(o, 8).ok()?
    } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()?
    } else {
        return None;
    };
    (n <= max).then_some(n)
}

struct Reader<'a> {
    p: Parser<'a>,
    max_services: usize,
}

type R<T> = Result<T, Located>;

fn at(mark: Mark, error: ParseError) -> Located {
    Located {
        line: mark.line1(),
        error,
    }
}

/// A scalar value, or the error for anything else.
struct Scalar {
    value: String,
    style: Style,
    mark: Mark,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> R<(Event, Mark)> {
        let (e, m) = self.p.next_event().map_err(|e| Located {
            line: e.mark.line1(),
            error: e.into(),
        })?;
        let decorated = match &e {
            Event::Alias => true,
            Event::Scalar { decorated, .. }
            | Event::SequenceStart { decorated }
            | Event::MappingStart { decorated } => *decorated,
            _ => false,
        };
        if decorated {
            return Err(at(
                m,
                ParseError::Decorated {
                    path: String::new(),
                },
            ));
        }
        Ok((e, m))
    }

    /// The next event, with `path` filled into a decoration error.
    fn node(&mut self, path: &dyn Fn() -> String) -> R<(Event, Mark)> {
        self.next().map_err(|mut l| {
            if let ParseError::Decorated { path: p } = &mut l.error {
                *p = path();
            }
            l
        })
    }

    fn scalar(&mut self, path: &dyn Fn() -> String, expected: &'static str) -> R<Scalar> {
        match self.node(path)? {
            (Event::Scalar { value, style, .. }, mark) => {
                if is_null(&value, style) {
                    return Err(at(
                        mark,
                        ParseError::Null {
                            path: path(),
                            hint: "",
                        },
                    ));
                }
                Ok(Scalar { value, style, mark })
            }
            (e, mark) => Err(at(
                mark,
                ParseError::Type {
                    path: path(),
                    expected,
                    found: found(&e),
                },
            )),
        }
    }

    /// Expects the start of a collection (`seq`: a sequence, else a mapping).
    /// A null is its own error with a hint for lists.
    fn start(&mut self, path: &dyn Fn() -> String, seq: bool) -> R<Mark> {
        let (e, mark) = self.node(path)?;
        match (&e, seq) {
            (Event::SequenceStart { .. }, true) | (Event::MappingStart { .. }, false) => Ok(mark),
            (Event::Scalar { value, style, .. }, _) if is_null(value, *style) => Err(at(
                mark,
                ParseError::Null {
                    path: path(),
                    hint: if seq {
                        "; write `[]` for an empty list"
                    } else {
                        ""
                    },
                },
            )),
            _ => Err(at(
                mark,
                ParseError::Type {
                    path: path(),
                    expected: if seq { "a sequence" } else { "a mapping" },
                    found: found(&e),
                },
            )),
        }
    }

    /// The next key of a mapping (`None` at its end), checked against
    /// `fields` and `seen` (a bit per field): the index of the field.
    fn key(
        &mut self,
        path: &dyn Fn() -> String,
        fields: &[&str],
        expected: &'static str,
        seen: &mut u32,
    ) -> R<Option<(usize, Mark)>> {
        let (e, mark) = self.node(path)?;
        let key = match e {
            Event::MappingEnd => return Ok(None),
            Event::Scalar { value, .. } => value,
            e => {
                return Err(at(
                    mark,
                    ParseError::Type {
                        path: path(),
                        expected: "a field name",
                        found: found(&e),
                    },
                ))
            }
        };
        let Some(i) = fields.iter().position(|f| *f == key) else {
            return Err(at(
                mark,
                ParseError::UnknownField {
                    path: path(),
                    field: key,
                    expected,
                },
            ));
        };
        if *seen & (1 << i) != 0 {
            return Err(at(
                mark,
                ParseError::DuplicateKey {
                    path: path(),
                    field: key,
                },
            ));
        }
        *seen |= 1 << i;
        Ok(Some((i, mark)))
    }

    fn int(&mut self, path: &dyn Fn() -> String, max: u64, range: &'static str) -> R<(u64, Mark)> {
        let s = self.scalar(path, "an integer")?;
        integer(&s.value, s.style, max)
            .map(|n| (n, s.mark))
            .ok_or_else(|| {
                at(
                    s.mark,
                    ParseError::Integer {
                        path: path(),
                        value: s.value,
                        range,
                    },
                )
            })
    }

    fn addr(&mut self, path: &dyn Fn() -> String) -> R<(IpAddr, Mark)> {
        let s = self.scalar(path, "an IP address")?;
        s.value.parse().map(|a| (a, s.mark)).map_err(|source| {
            at(
                s.mark,
                ParseError::Address {
                    path: path(),
                    value: s.value,
                    source,
                },
            )
        })
    }

    fn missing(path: String, field: &'static str, mark: Mark) -> Located {
        at(mark, ParseError::MissingField { path, field })
    }

    fn document(&mut self) -> R<(DesiredState, Lines)> {
        let (e, m) = self.next()?;
        if e != Event::StreamStart {
            return Err(at(
                m,
                ParseError::Type {
                    path: String::new(),
                    expected: "a stream",
                    found: found(&e),
                },
            ));
        }
        match self.next()? {
            (Event::DocumentStart, _) => {}
            (Event::StreamEnd, _) => return Err(at(m, ParseError::Empty)),
            (e, m) => {
                return Err(at(
                    m,
                    ParseError::Type {
                        path: String::new(),
                        expected: "a document",
                        found: found(&e),
                    },
                ))
            }
        }
        let root = || "(top level)".to_string();
        let start = self.start(&root, false)?;
        let mut lines = Lines::default();
        let mut services = None;
        let mut seen = 0;
        while let Some((_, km)) = self.key(&root, &["services"], "`services`", &mut seen)? {
            lines.services_key = line32(km);
            services = Some(self.services(&mut lines)?);
        }
        let Some(services) = services else {
            return Err(Self::missing(root(), "services", start));
        };
        match self.next()? {
            (Event::DocumentEnd, _) => {}
            (e, m) => {
                return Err(at(
                    m,
                    ParseError::Type {
                        path: String::new(),
                        expected: "the end of the document",
                        found: found(&e),
                    },
                ))
            }
        }
        match self.next()? {
            (Event::StreamEnd, _) => Ok((services.into_iter().collect(), lines)),
            (_, m) => Err(at(m, ParseError::MultipleDocuments)),
        }
    }

    fn services(&mut self, lines: &mut Lines) -> R<Vec<ServiceSpec>> {
        self.start(&|| "services".to_string(), true)?;
        let mut out = Vec::new();
        loop {
            let i = out.len();
            let path = move || format!("services[{i}]");
            let (e, m) = self.node(&path)?;
            match e {
                Event::SequenceEnd => return Ok(out),
                Event::MappingStart { .. } => {}
                e => {
                    return Err(at(
                        m,
                        ParseError::Type {
                            path: path(),
                            expected: "a mapping",
                            found: found(&e),
                        },
                    ))
                }
            }
            let mut sl = ServiceLines {
                item: line32(m),
                ..ServiceLines::default()
            };
            if i >= self.max_services {
                return Err(at(
                    m,
                    ParseError::TooManyServices {
                        limit: self.max_services,
                    },
                ));
            }
            out.push(self.service(i, m, &mut sl)?);
            lines.services.push(sl);
        }
    }

    fn service(&mut self, i: usize, start: Mark, sl: &mut ServiceLines) -> R<ServiceSpec> {
        const FIELDS: [&str; 5] = ["name", "vips", "ports", "policy", "endpoints"];
        const EXPECTED: &str = "`name`, `vips`, `ports`, `policy`, `endpoints`";
        let path = move || format!("services[{i}]");
        let mut seen = 0u32;
        let (mut name, mut vips, mut ports) = (None, None, None);
        let mut policy = LbPolicy::Random;
        let mut endpoints = Vec::new();
        while let Some((f, km)) = self.key(&path, &FIELDS, EXPECTED, &mut seen)? {
            let field = |f: &'static str| move || format!("services[{i}].{f}");
            match f {
                0 => {
                    sl.name = line32(km);
                    name = Some(self.scalar(&field("name"), "a string")?.value);
                }
                1 => {
                    sl.vips_key = line32(km);
                    self.start(&field("vips"), true)?;
                    let mut v = Vec::new();
                    loop {
                        let j = v.len();
                        let p = move || format!("services[{i}].vips[{j}]");
                        match self.node(&p)? {
                            (Event::SequenceEnd, _) => break,
                            (Event::Scalar { value, style, .. }, m) => {
                                if is_null(&value, style) {
                                    return Err(at(
                                        m,
                                        ParseError::Null {
                                            path: p(),
                                            hint: "",
                                        },
                                    ));
                                }
                                let a = value.parse().map_err(|source| {
                                    at(
                                        m,
                                        ParseError::Address {
                                            path: p(),
                                            value,
                                            source,
                                        },
                                    )
                                })?;
                                v.push(a);
                                sl.vips.push(line32(m));
                            }
                            (e, m) => {
                                return Err(at(
                                    m,
                                    ParseError::Type {
                                        path: p(),
                                        expected: "an IP address",
                                        found: found(&e),
                                    },
                                ))
                            }
                        }
                    }
                    vips = Some(v);
                }
                2 => {
                    sl.ports_key = line32(km);
                    ports = Some(self.list(i, "ports", &mut sl.ports, Self::port)?);
                }
                3 => {
                    sl.policy = line32(km);
                    let s = self.scalar(&field("policy"), "a policy")?;
                    policy = match s.value.as_str() {
                        "random" => LbPolicy::Random,
                        "strict" => LbPolicy::Strict,
                        "failover" => LbPolicy::Failover,
                        _ => {
                            return Err(at(
                                s.mark,
                                ParseError::Policy {
                                    path: field("policy")(),
                                    value: s.value,
                                },
                            ))
                        }
                    };
                }
                _ => {
                    sl.endpoints_key = line32(km);
                    endpoints = self.list(i, "endpoints", &mut sl.endpoints, Self::endpoint)?;
                }
            }
        }
        let (Some(name), Some(vips), Some(ports)) = (name, vips, ports) else {
            let field = if seen & 1 == 0 {
                "name"
            } else if seen & 2 == 0 {
                "vips"
            } else {
                "ports"
            };
            return Err(Self::missing(path(), field, start));
        };
        Ok(ServiceSpec {
            name,
            vips,
            ports,
            policy,
            endpoints,
        })
    }

    /// A sequence of mappings read by `item`, recording each item's lines.
    fn list<T>(
        &mut self,
        i: usize,
        what: &'static str,
        lines: &mut Vec<ItemLines>,
        item: fn(&mut Self, &str, Mark, &mut ItemLines) -> R<T>,
    ) -> R<Vec<T>> {
        self.start(&|| format!("services[{i}].{what}"), true)?;
        let mut out = Vec::new();
        loop {
            let p = format!("services[{i}].{what}[{}]", out.len());
            let (e, m) = self.node(&|| p.clone())?;
            match e {
                Event::SequenceEnd => return Ok(out),
                Event::MappingStart { .. } => {}
                e => {
                    return Err(at(
                        m,
                        ParseError::Type {
                            path: p,
                            expected: "a mapping",
                            found: found(&e),
                        },
                    ))
                }
            }
            let mut il = ItemLines {
                item: line32(m),
                fields: [0; 3],
            };
            out.push(item(self, &p, m, &mut il)?);
            lines.push(il);
        }
    }

    fn port(&mut self, path: &str, start: Mark, il: &mut ItemLines) -> R<PortSpec> {
        let here = || path.to_string();
        let mut seen = 0u32;
        let (mut port, mut target) = (None, None);
        while let Some((f, km)) =
            self.key(&here, &PORT_FIELDS, "`port`, `targetPort`", &mut seen)?
        {
            il.fields[f] = line32(km);
            let p = || format!("{path}.{}", PORT_FIELDS[f]);
            // A null targetPort means "same as port", as serde's Option did.
            let (n, _) = if f == 1 {
                match self.node(&p)? {
                    (Event::Scalar { value, style, .. }, m) => {
                        if is_null(&value, style) {
                            continue;
                        }
                        let n = integer(&value, style, 65_535).ok_or_else(|| {
                            at(
                                m,
                                ParseError::Integer {
                                    path: p(),
                                    value,
                                    range: "0..=65535",
                                },
                            )
                        })?;
                        (n, m)
                    }
                    (e, m) => {
                        return Err(at(
                            m,
                            ParseError::Type {
                                path: p(),
                                expected: "an integer",
                                found: found(&e),
                            },
                        ))
                    }
                }
            } else {
                self.int(&p, 65_535, "0..=65535")?
            };
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            if f == 0 {
                port = Some(n);
            } else {
                target = Some(n);
            }
        }
        let Some(port) = port else {
            return Err(Self::missing(path.to_string(), "port", start));
        };
        Ok(PortSpec {
            port,
            target_port: target.unwrap_or(port),
        })
    }

    fn endpoint(&mut self, path: &str, start: Mark, il: &mut ItemLines) -> R<EndpointSpec> {
        let here = || path.to_string();
        let mut seen = 0u32;
        let (mut address, mut port, mut priority) = (None, 0u16, 0u8);
        while let Some((f, km)) = self.key(
            &here,
            &ENDPOINT_FIELDS,
            "`address`, `port`, `priority`",
            &mut seen,
        )? {
            il.fields[f] = line32(km);
            let p = || format!("{path}.{}", ENDPOINT_FIELDS[f]);
            match f {
                0 => address = Some(self.addr(&p)?.0),
                1 => port = u16::try_from(self.int(&p, 65_535, "0..=65535")?.0).unwrap_or(0),
                _ => priority = u8::try_from(self.int(&p, 255, "0..=255")?.0).unwrap_or(u8::MAX),
            }
        }
        let Some(address) = address else {
            return Err(Self::missing(path.to_string(), "address", start));
        };
        Ok(EndpointSpec {
            address,
            port,
            priority,
        })
    }
}

/// Parses a services document: the desired state and where each field is.
/// Stops with an error at service number `max_services + 1`.
pub fn read(text: &str, max_services: usize) -> Result<(DesiredState, Lines), Located> {
    Reader {
        p: Parser::new(text),
        max_services,
    }
    .document()
}
