//! Replica placement across availability zones, as MSK places replicas and as Kafka's
//! rack-aware assignment does: a partition's replicas go to distinct AZs while there are AZs
//! left, the first replica (the preferred leader) cycles through an AZ-alternating list of
//! brokers so leaders spread evenly over brokers and AZs, and a replication factor above the
//! number of AZs still spreads replicas as evenly as possible.

use std::collections::BTreeMap;

/// A broker as placement sees it: its id and AZ (`broker.rack`; `None` is an AZ of its own
/// kind, shared by every broker without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeable {
    pub node_id: i32,
    pub az: Option<String>,
}

/// Brokers ordered so consecutive ones are in different AZs: the first broker of each AZ,
/// then the second of each, and so on (Kafka's `getRackAlternatedBrokerList`). AZs and the
/// brokers within each are taken in sorted order, so the result is deterministic.
pub fn az_alternated(brokers: &[Placeable]) -> Vec<Placeable> {
    let mut by_az: BTreeMap<Option<&str>, Vec<&Placeable>> = BTreeMap::new();
    for b in brokers {
        by_az.entry(b.az.as_deref()).or_default().push(b);
    }
    for v in by_az.values_mut() {
        v.sort_by_key(|b| b.node_id);
    }
    let depth = by_az.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0..depth {
        for v in by_az.values() {
            if let Some(b) = v.get(i) {
                out.push((*b).clone());
            }
        }
    }
    out
}

/// Replicas for `count` partitions of `replication_factor` replicas each, partition `p`'s
/// preferred leader being the `(first + p)`-th broker of the AZ-alternated list. `None` when
/// the replication factor exceeds the number of brokers (INVALID_REPLICATION_FACTOR).
pub fn place(
    brokers: &[Placeable],
    count: usize,
    replication_factor: usize,
    first: usize,
) -> Option<Vec<Vec<i32>>> {
    if replication_factor == 0 || replication_factor > brokers.len() {
        return None;
    }
    let list = az_alternated(brokers);
    let n = list.len();
    let mut out = Vec::with_capacity(count);
    for p in 0..count {
        let start = (first + p) % n;
        // Followers start further along the list on each lap around it, so partitions led by
        // the same broker do not all put their followers on the same brokers.
        let shift = (first + p) / n % n.max(1);
        let mut chosen: Vec<usize> = vec![start];
        let mut az_used: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        *az_used.entry(list[start].az.as_deref()).or_default() += 1;
        while chosen.len() < replication_factor {
            // Among brokers not chosen yet: the AZ with the fewest replicas of this partition
            // first, then the order of the list from the leader (plus the lap's shift).
            let best = (1..=n)
                .map(|k| (start + shift + k) % n)
                .filter(|i| !chosen.contains(i))
                .min_by_key(|&i| {
                    let used = az_used.get(&list[i].az.as_deref()).copied().unwrap_or(0);
                    let distance = (i + n - (start + shift) % n) % n;
                    (used, distance)
                });
            let Some(i) = best else { break };
            *az_used.entry(list[i].az.as_deref()).or_default() += 1;
            chosen.push(i);
        }
        out.push(chosen.into_iter().map(|i| list[i].node_id).collect());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn brokers(spec: &[(i32, &str)]) -> Vec<Placeable> {
        spec.iter()
            .map(|&(node_id, az)| Placeable {
                node_id,
                az: Some(az.to_string()),
            })
            .collect()
    }

    fn az_of(bs: &[Placeable], id: i32) -> String {
        bs.iter()
            .find(|b| b.node_id == id)
            .and_then(|b| b.az.clone())
            .unwrap_or_default()
    }

    #[test]
    fn alternated_list_interleaves_azs() {
        let bs = brokers(&[(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "b")]);
        let ids: Vec<i32> = az_alternated(&bs).iter().map(|b| b.node_id).collect();
        assert_eq!(ids, vec![1, 3, 4, 2, 5]);
    }

    #[test]
    fn replicas_of_a_partition_sit_in_distinct_azs() {
        let bs = brokers(&[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")]);
        let placed = place(&bs, 60, 3, 0).expect("placed");
        for replicas in &placed {
            let azs: BTreeSet<String> = replicas.iter().map(|&r| az_of(&bs, r)).collect();
            assert_eq!(azs.len(), 3, "{replicas:?} spans three AZs");
            let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
            assert_eq!(distinct.len(), 3, "no broker twice");
        }
    }

    #[test]
    fn leaders_and_replicas_spread_evenly() {
        let bs = brokers(&[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")]);
        let placed = place(&bs, 600, 3, 0).expect("placed");
        let mut leaders: HashMap<i32, usize> = HashMap::new();
        let mut replicas: HashMap<i32, usize> = HashMap::new();
        for r in &placed {
            *leaders.entry(r[0]).or_default() += 1;
            for b in r {
                *replicas.entry(*b).or_default() += 1;
            }
        }
        assert!(leaders.values().all(|&n| n == 100), "{leaders:?}");
        let (lo, hi) = (
            replicas.values().min().copied().unwrap_or(0),
            replicas.values().max().copied().unwrap_or(0),
        );
        assert!(hi - lo <= 30, "replicas per broker {replicas:?}");
        // Followers of one leader vary across partitions.
        let followers_of_1: BTreeSet<Vec<i32>> = placed
            .iter()
            .filter(|r| r[0] == 1)
            .map(|r| r[1..].to_vec())
            .collect();
        assert!(followers_of_1.len() > 1, "{followers_of_1:?}");
    }

    #[test]
    fn more_replicas_than_azs_spread_as_evenly_as_possible() {
        let bs = brokers(&[(1, "a"), (2, "a"), (3, "b"), (4, "b")]);
        for replicas in place(&bs, 20, 3, 1).expect("placed") {
            let mut per_az: HashMap<String, usize> = HashMap::new();
            for r in &replicas {
                *per_az.entry(az_of(&bs, *r)).or_default() += 1;
            }
            assert_eq!(per_az.len(), 2, "{replicas:?} uses both AZs");
            assert!(per_az.values().all(|&n| n <= 2), "{replicas:?}");
        }
    }

    #[test]
    fn impossible_replication_factors_are_refused() {
        let bs = brokers(&[(1, "a"), (2, "b")]);
        assert!(place(&bs, 1, 3, 0).is_none());
        assert!(place(&bs, 1, 0, 0).is_none());
        assert_eq!(place(&bs, 2, 1, 0), Some(vec![vec![1], vec![2]]));
    }

    #[test]
    fn brokers_without_an_az_are_placed_too() {
        let bs = vec![
            Placeable {
                node_id: 1,
                az: None,
            },
            Placeable {
                node_id: 2,
                az: None,
            },
        ];
        assert_eq!(place(&bs, 2, 2, 0), Some(vec![vec![1, 2], vec![2, 1]]));
    }
}
