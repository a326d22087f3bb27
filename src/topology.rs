//! The flow graph: which flows form cycles, and so need provenance.
//!
//! Clusters are nodes and flows are edges. A flow `S → T` is part of a cycle when `T`
//! can reach `S` through other flows (active-active is the two-flow cycle; a ring of
//! three clusters and hub-and-spoke with the hub feeding the spokes back are longer
//! ones). A record can travel such a cycle forever unless something stops it.
//! MirrorMaker 2 stops it by renaming topics at every hop; with identity names the
//! producer registry does (see [`crate::registry`]), on every flow by default, since a
//! config usually holds one datacenter's flows and cannot see the whole cycle. What this
//! graph still catches: a cycle of identity-named flows in one config with provenance
//! explicitly off, refused at start.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

/// How a flow names its target topics. (Defined here, with [`ProvenanceMode`], so that
/// the graph does not depend on the configuration; `config` re-exports both.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rename {
    /// Target topic has the source topic's name.
    Identity,
    /// Target topic is "<source alias>.<topic>" (MirrorMaker 2's DefaultReplicationPolicy).
    Prefix,
}

/// How a flow keeps records from returning to a cluster they have been on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvenanceMode {
    /// The default: every batch the flow writes carries a producer id registered on
    /// the target with the path of clusters it came through; batches are skipped by
    /// their producer id, read from the batch header (zero-copy).
    Registry,
    /// As `registry`, and every record also gets the `mirrorproxy.provenance` header
    /// (stamping: compressed batches are decompressed and re-compressed).
    Header,
    /// Nothing is skipped (batches written are still registered, so other flows
    /// can recognise them). Refused on identity-named cycles within one config.
    Off,
}

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

/// Decides every flow's loop guard: the configured one, else the producer registry
/// (which needs nothing from the flow graph: it works across configs). Errs with the
/// index of the flow and a message naming the loop when a cycle of identity-named
/// flows within this config has provenance off.
pub fn resolve_provenance(edges: &[Edge<'_>]) -> Result<Vec<ProvenanceMode>, (usize, String)> {
    let mut modes = Vec::with_capacity(edges.len());
    for (i, e) in edges.iter().enumerate() {
        let mode = e.provenance.unwrap_or(ProvenanceMode::Registry);
        if mode == ProvenanceMode::Off && e.rename == Rename::Identity {
            if let Some(back) = path(edges, e.target, e.source) {
                let mut loop_ = vec![e.source.to_owned()];
                loop_.extend(back);
                return Err((
                    i,
                    format!(
                        "flows form a loop {} with identity topic names and provenance = \"off\": every record would circle forever; remove the setting (the default, \"registry\", prevents loops) or set \"header\"",
                        loop_.join(" -> ")
                    ),
                ));
            }
        }
        modes.push(mode);
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProvenanceMode::{Header, Off, Registry};

    fn e<'a>(s: &'a str, t: &'a str, p: Option<ProvenanceMode>) -> Edge<'a> {
        Edge { source: s, target: t, rename: Rename::Identity, provenance: p }
    }

    #[test]
    fn every_flow_guards_against_loops_by_default_cycle_or_not() {
        // A one-way flow in this config may be half of a cycle whose other half runs in
        // another datacenter's config: the default cannot depend on this graph.
        assert_eq!(resolve_provenance(&[e("a", "b", None)]).unwrap(), [Registry]);
        assert_eq!(resolve_provenance(&[e("a", "b", None), e("b", "a", None)]).unwrap(), [Registry, Registry]);
        assert_eq!(resolve_provenance(&[e("a", "b", Some(Header))]).unwrap(), [Header]);
        assert_eq!(resolve_provenance(&[e("a", "b", Some(Off))]).unwrap(), [Off]);
    }

    #[test]
    fn an_identity_cycle_with_provenance_off_is_refused_and_named() {
        let flows = [e("a", "b", None), e("b", "c", None), e("c", "a", Some(Off))];
        let (i, msg) = resolve_provenance(&flows).unwrap_err();
        assert_eq!(i, 2);
        assert!(msg.contains("c -> a -> b -> c"), "{msg}");
        // with renaming, a cycle can be left to topic names (MirrorMaker 2 style)
        let mut renamed = flows.clone();
        renamed[2].rename = Rename::Prefix;
        assert_eq!(resolve_provenance(&renamed).unwrap(), [Registry, Registry, Off]);
    }
}
