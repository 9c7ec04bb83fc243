//! The services-file parser on arbitrary bytes: never panics, never hangs,
//! and whatever it accepts is valid and survives a render / re-parse.
#![no_main]

use baton_agent::model::{Capacity, DesiredState};
use baton_agent::source::file::parse_bytes;
use libfuzzer_sys::fuzz_target;

/// Small maps, so capacity errors are reachable too.
const CAP: Capacity = Capacity {
    frontends: 64,
    services: 64,
    endpoints: 256,
    backends: 256,
};

/// The state as a block-style services file (names as JSON strings, which
/// are YAML double-quoted scalars).
fn render(s: &DesiredState) -> Option<String> {
    // A null `services` is refused on purpose (a half-written file): "no
    // services" is only an explicit empty list.
    if s.services.is_empty() {
        return Some("services: []\n".into());
    }
    let mut y = String::from("services:\n");
    for svc in &s.services {
        // Raw non-printable characters are not allowed in YAML input.
        if !svc.name.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return None;
        }
        let vips: Vec<String> = svc.vips.iter().map(|v| format!("\"{v}\"")).collect();
        y.push_str(&format!(
            "  - name: {}\n    vips: [{}]\n    policy: {}\n    ports:\n",
            serde_json::to_string(&svc.name).ok()?,
            vips.join(", "),
            format!("{:?}", svc.policy).to_lowercase()
        ));
        for p in &svc.ports {
            y.push_str(&format!(
                "      - {{port: {}, targetPort: {}}}\n",
                p.port, p.target_port
            ));
        }
        y.push_str("    endpoints: [\n");
        for e in &svc.endpoints {
            y.push_str(&format!(
                "      {{address: \"{}\", port: {}, priority: {}}},\n",
                e.address, e.port, e.priority
            ));
        }
        y.push_str("    ]\n");
    }
    Some(y)
}

fuzz_target!(|data: &[u8]| {
    match parse_bytes("f.yaml", data, &CAP) {
        Ok(state) => {
            assert!(state.validate(&CAP).is_empty());
            if let Some(text) = render(&state) {
                let again = parse_bytes("r.yaml", text.as_bytes(), &CAP)
                    .unwrap_or_else(|e| panic!("re-parse of\n{text}\nfailed: {e}"));
                assert_eq!(again, state);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
