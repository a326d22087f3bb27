//! The flow graph: which flows form cycles, and so need provenance.
//!
//! Clusters are nodes and flows are edges. A flow `S → T` is part of a cycle when `T`
//! can reach `S` through other flows (active-active is the two-flow cycle; a ring of
//! three clusters and hub-and-spoke with the hub feeding the spokes back are longer
//! ones). A record can travel such a cycle forever unless something stops it.
//! MirrorMaker 2 stops it by renaming topics at every hop; with identity names only the
//! provenance header can (see [`crate::batch::provenance`]). Hence the defaults:
//! provenance on for flows in a cycle, off (pure byte pass-through) for one-way flows,
//! and a cycle of identity-named flows with provenance off is refused at start.

use std::collections::{HashMap, VecDeque};

use crate::config::{ProvenanceMode, Rename};

/// A flow as the graph sees it.
#[derive(Debug, Clone)]
pub struct Edge<'a> {
    pub source: &'a str,
    pub target: &'a str,
    pub rename: Rename,
    pub provenance: Option<ProvenanceMode>,
}

/// A path of flows from `from` to `to`, as cluster aliases (`[from, .., to]`).
fn path(edges: &[Edge<'_>], from: &str, to: &str) -> Option<Vec<String>> {
    let mut previous: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![from];
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut out = vec![to.to_owned()];
            let mut at = to;
            while let Some(&p) = previous.get(at) {
                out.push(p.to_owned());
                at = p;
            }
            out.reverse();
            return Some(out);
        }
        for e in edges.iter().filter(|e| e.source == node) {
            if !seen.contains(&e.target) {
                seen.push(e.target);
                previous.insert(e.target, node);
                queue.push_back(e.target);
            }
        }
    }
    None
}

/// Decides for every flow whether provenance is on. Errs with the index of the flow and
/// a message naming the loop when a cycle of identity-named flows has provenance off.
pub fn resolve_provenance(edges: &[Edge<'_>]) -> Result<Vec<bool>, (usize, String)> {
    let mut on = Vec::with_capacity(edges.len());
    for (i, e) in edges.iter().enumerate() {
        let cycle = path(edges, e.target, e.source);
        match (e.provenance, cycle) {
            (Some(ProvenanceMode::Header), _) => on.push(true),
            (None, Some(_)) => on.push(true),
            (None | Some(ProvenanceMode::Off), None) => on.push(false),
            (Some(ProvenanceMode::Off), Some(back)) => {
                if e.rename == Rename::Identity {
                    let mut loop_ = vec![e.source.to_owned()];
                    loop_.extend(back);
                    return Err((
                        i,
                        format!(
                            "flows form a loop {} with identity topic names and provenance = \"off\": every record would circle forever; set provenance = \"header\" on this flow (or remove the setting)",
                            loop_.join(" -> ")
                        ),
                    ));
                }
                on.push(false);
            }
        }
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e<'a>(s: &'a str, t: &'a str, p: Option<ProvenanceMode>) -> Edge<'a> {
        Edge { source: s, target: t, rename: Rename::Identity, provenance: p }
    }

    #[test]
    fn one_way_flows_stay_pass_through_and_cycles_get_provenance() {
        assert_eq!(resolve_provenance(&[e("a", "b", None)]).unwrap(), [false]);
        assert_eq!(resolve_provenance(&[e("a", "b", None), e("b", "a", None)]).unwrap(), [true, true]);
        // ring of three, plus a one-way tail
        let ring = [e("a", "b", None), e("b", "c", None), e("c", "a", None), e("c", "d", None)];
        assert_eq!(resolve_provenance(&ring).unwrap(), [true, true, true, false]);
        // forced on for a one-way flow
        assert_eq!(resolve_provenance(&[e("a", "b", Some(ProvenanceMode::Header))]).unwrap(), [true]);
    }

    #[test]
    fn an_identity_cycle_with_provenance_off_is_refused_and_named() {
        let flows = [e("a", "b", None), e("b", "c", None), e("c", "a", Some(ProvenanceMode::Off))];
        let (i, msg) = resolve_provenance(&flows).unwrap_err();
        assert_eq!(i, 2);
        assert!(msg.contains("c -> a -> b -> c"), "{msg}");
        // with renaming, a cycle can be left to topic names (MirrorMaker 2 style)
        let mut renamed = flows.clone();
        renamed[2].rename = Rename::Prefix;
        assert_eq!(resolve_provenance(&renamed).unwrap(), [true, true, false]);
    }
}
