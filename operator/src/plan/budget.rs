//! Resolves `maxUnavailable` against the number of selected nodes.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::DEFAULT_MAX_UNAVAILABLE;

/// `maxUnavailable` that the CRD's CEL rules should have rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Not a whole number or a percentage.
    #[error("maxUnavailable {0:?} is neither a whole number nor a percentage like \"25%\"")]
    Malformed(String),
}

/// How many of `nodes` selected nodes may be unavailable at once: a count, or a
/// percentage rounded down; never below 1 so that a rollout always progresses.
pub fn max_unavailable(value: Option<&IntOrString>, nodes: u32) -> Result<u32, BudgetError> {
    let raw = match value {
        None => u64::try_from(DEFAULT_MAX_UNAVAILABLE).unwrap_or(1),
        Some(IntOrString::Int(n)) => u64::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => parse_string(s, nodes)?,
    };
    // Above the fleet size the value means "all of them".
    Ok(u32::try_from(raw)
        .unwrap_or(u32::MAX)
        .clamp(1, nodes.max(1)))
}

fn parse_string(s: &str, nodes: u32) -> Result<u64, BudgetError> {
    let malformed = || BudgetError::Malformed(s.to_owned());
    let (digits, percent) = match s.strip_suffix('%') {
        Some(d) => (d, true),
        None => (s, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // Saturate huge numbers instead of failing: "999999999999%" is still "all".
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    Ok(if percent {
        n.saturating_mul(u64::from(nodes)) / 100
    } else {
        n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<IntOrString> {
        Some(IntOrString::String(v.into()))
    }

    #[test]
    fn counts_are_taken_as_they_are_but_capped_at_the_fleet() {
        assert_eq!(max_unavailable(Some(&IntOrString::Int(3)), 10), Ok(3));
        assert_eq!(max_unavailable(s("3").as_ref(), 10), Ok(3));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(50)), 10), Ok(10));
    }

    #[test]
    fn percentages_round_down_but_never_below_one() {
        assert_eq!(max_unavailable(s("25%").as_ref(), 10), Ok(2));
        assert_eq!(max_unavailable(s("10%").as_ref(), 5000), Ok(500));
        assert_eq!(max_unavailable(s("1%").as_ref(), 50), Ok(1));
        assert_eq!(max_unavailable(s("33%").as_ref(), 5000), Ok(1650));
        assert_eq!(max_unavailable(s("100%").as_ref(), 7), Ok(7));
        assert_eq!(max_unavailable(s("250%").as_ref(), 7), Ok(7));
    }

    #[test]
    fn zero_and_missing_values_still_allow_one_node() {
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 10), Ok(1));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(-4)), 10), Ok(1));
        assert_eq!(max_unavailable(s("0%").as_ref(), 10), Ok(1));
        assert_eq!(max_unavailable(None, 10), Ok(1));
        assert_eq!(max_unavailable(s("5").as_ref(), 0), Ok(1));
    }

    #[test]
    fn malformed_strings_are_errors() {
        for bad in ["", "%", "ten", "5.5%", "-1", "1%%", " 1"] {
            assert_eq!(
                max_unavailable(s(bad).as_ref(), 10),
                Err(BudgetError::Malformed(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn enormous_values_saturate() {
        assert_eq!(
            max_unavailable(s("99999999999999999999999").as_ref(), 10),
            Ok(10)
        );
        assert_eq!(
            max_unavailable(s("99999999999999999999999%").as_ref(), 10),
            Ok(10)
        );
    }
}
