//! Planning the writes that move one priority bucket from its current dense
//! list of backends to a target set, keeping keys 1..=count present at every
//! instant and taking removed backends out of new connects first.

use std::collections::HashSet;

/// The writes for one bucket, in the order they must reach the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketPlan {
    /// (0-based index, backend uid) writes, done before the count changes.
    pub writes: Vec<(usize, u32)>,
    /// The bucket after the plan: index i holds key i+1.
    pub after: Vec<u32>,
    /// 0-based indices to delete after the count has been lowered.
    pub deletes: Vec<usize>,
}

impl BucketPlan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.deletes.is_empty()
    }
}

/// Plans `cur` → `target` (target order decides where additions go).
///
/// Removed slots are overwritten by additions first; surplus additions are
/// appended past the current count (invisible until the count is raised);
/// surplus removals are filled from the tail, and tail slots that will be cut
/// off are overwritten with a survivor, so no removed backend stays reachable
/// while the count is lowered.
pub fn plan(cur: &[u32], target: &[u32]) -> BucketPlan {
    let want: HashSet<u32> = target.iter().copied().collect();
    let have: HashSet<u32> = cur.iter().copied().collect();
    let mut holes = cur
        .iter()
        .enumerate()
        .filter(|(_, u)| !want.contains(u))
        .map(|(i, _)| i);
    let mut after = cur.to_vec();
    let mut writes = Vec::new();
    let mut seen = HashSet::new();
    for &add in target.iter().filter(|u| !have.contains(u)) {
        if !seen.insert(add) {
            continue;
        }
        match holes.next() {
            Some(h) => {
                after[h] = add;
                writes.push((h, add));
            }
            None => {
                writes.push((after.len(), add));
                after.push(add);
            }
        }
    }
    let remaining: Vec<usize> = holes.collect();
    let mut deletes = Vec::new();
    if !remaining.is_empty() {
        let n = after.len();
        let m = n - remaining.len();
        let is_hole: HashSet<usize> = remaining.iter().copied().collect();
        let survivors = (m..n).filter(|i| !is_hole.contains(i));
        for (h, s) in remaining.iter().copied().filter(|&h| h < m).zip(survivors) {
            after[h] = after[s];
            writes.push((h, after[s]));
        }
        if m > 0 {
            let keep = after[0];
            writes.extend(
                remaining
                    .iter()
                    .copied()
                    .filter(|&h| h >= m)
                    .map(|h| (h, keep)),
            );
        }
        after.truncate(m);
        deletes = (m..n).collect();
    }
    BucketPlan {
        writes,
        after,
        deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a plan against a model of the map and checks the invariant and
    /// that removed backends are never reachable after their first write.
    fn replay(cur: &[u32], target: &[u32]) -> BucketPlan {
        let p = plan(cur, target);
        let mut slots: Vec<Option<u32>> = cur.iter().map(|&u| Some(u)).collect();
        let count = cur.len();
        let removed: HashSet<u32> = cur
            .iter()
            .copied()
            .filter(|u| !target.contains(u))
            .collect();
        let visible_ok = |slots: &Vec<Option<u32>>, count: usize| {
            for i in 0..count {
                assert!(
                    slots.get(i).copied().flatten().is_some(),
                    "hole at {} with count {count}",
                    i + 1
                );
            }
        };
        for &(i, u) in &p.writes {
            if i >= slots.len() {
                slots.resize(i + 1, None);
            }
            slots[i] = Some(u);
            visible_ok(&slots, count);
        }
        // After the writes, removed backends are gone from every visible slot.
        let new_count = p.after.len();
        if new_count > 0 {
            for (i, slot) in slots.iter().take(count).enumerate() {
                assert!(
                    !removed.contains(&slot.expect("visible")),
                    "removed backend still at {}",
                    i + 1
                );
            }
        }
        // The count flips; then deletes.
        visible_ok(&slots, new_count);
        for &d in &p.deletes {
            assert!(d >= new_count, "deleting a visible key");
            slots[d] = None;
            visible_ok(&slots, new_count);
        }
        slots.truncate(new_count);
        let got: Vec<u32> = slots.into_iter().map(|s| s.expect("dense")).collect();
        assert_eq!(got, p.after);
        let mut a = p.after.clone();
        a.sort();
        let mut t = target.to_vec();
        t.sort();
        t.dedup();
        assert_eq!(a, t, "bucket content differs from target");
        p
    }

    #[test]
    fn unchanged_bucket_plans_nothing() {
        assert!(replay(&[1, 2, 3], &[3, 1, 2]).is_empty());
    }

    #[test]
    fn additions_append_past_the_count() {
        let p = replay(&[1, 2], &[1, 2, 3, 4]);
        assert_eq!(p.writes, vec![(2, 3), (3, 4)]);
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn replacements_overwrite_in_place() {
        let p = replay(&[1, 2, 3], &[1, 9, 3]);
        assert_eq!(p.writes, vec![(1, 9)]);
        assert_eq!(p.after, vec![1, 9, 3]);
    }

    #[test]
    fn removals_fill_from_the_tail_then_shrink() {
        let p = replay(&[1, 2, 3, 4, 5], &[1, 4, 5]);
        assert_eq!(p.after.len(), 3);
        assert_eq!(p.deletes, vec![3, 4]);
    }

    #[test]
    fn emptying_a_bucket_deletes_everything() {
        let p = replay(&[1, 2, 3], &[]);
        assert!(p.writes.is_empty());
        assert_eq!(p.deletes, vec![0, 1, 2]);
    }

    #[test]
    fn exhaustive_small_transitions() {
        // Every pair of subsets of {1..5} (as ordered lists): 32 x 32 cases.
        let sets: Vec<Vec<u32>> = (0u32..32)
            .map(|m| (1..=5).filter(|b| m & (1 << (b - 1)) != 0).collect())
            .collect();
        for a in &sets {
            for b in &sets {
                replay(a, b);
                let mut r = b.clone();
                r.reverse();
                replay(a, &r);
            }
        }
    }
}
