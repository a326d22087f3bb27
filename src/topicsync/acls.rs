//! Which ACL bindings a flow copies to its target (`sync_acls = true`; off by default,
//! since copying permissions is a security decision). Sans-I/O.
//!
//! MirrorMaker 2's rules (`MirrorSourceConnector.syncTopicAcls`): literal topic
//! bindings of the mirrored topics, with the rename applied; ALLOW WRITE dropped and
//! ALLOW ALL downgraded to READ, so applications cannot write into a mirror; DENY kept.
//! Beyond MirrorMaker 2: literal bindings on the consumer groups the flow syncs
//! (`groups`), ALLOW downgraded to READ (what a consumer needs to commit and join) and
//! DENY kept, so consumers can actually resume on the standby after a failover.
//!
//! Only bindings that the target lacks are created; none is ever deleted, so bindings
//! made on the target by anyone else stay.

use std::collections::{BTreeSet, HashSet};

use crate::cluster::acls::{
    AclBinding, ALLOW, OP_ALL, OP_READ, OP_WRITE, PATTERN_LITERAL, RESOURCE_GROUP, RESOURCE_TOPIC,
};
use crate::config::Flow;

/// The bindings the target should have for `source` (deduplicated, sorted).
/// `mirrored`: the source topics the flow mirrors.
#[must_use]
pub fn wanted<S: std::hash::BuildHasher>(
    flow: &Flow,
    source: &[AclBinding],
    mirrored: &HashSet<String, S>,
) -> Vec<AclBinding> {
    let mut out = BTreeSet::new();
    for b in source {
        if b.pattern_type != PATTERN_LITERAL {
            continue;
        }
        let mut t = b.clone();
        if b.resource_type == RESOURCE_TOPIC && mirrored.contains(&b.name) {
            if b.permission == ALLOW && b.operation == OP_WRITE {
                continue;
            }
            if b.permission == ALLOW && b.operation == OP_ALL {
                t.operation = OP_READ;
            }
            t.name = flow.target_topic(&b.name);
        } else if b.resource_type == RESOURCE_GROUP && flow.syncs_group(&b.name) {
            if b.permission == ALLOW {
                t.operation = OP_READ;
            }
        } else {
            continue;
        }
        out.insert(t);
    }
    out.into_iter().collect()
}

/// The wanted bindings the target does not have yet.
#[must_use]
pub fn missing(wanted: Vec<AclBinding>, target: &[AclBinding]) -> Vec<AclBinding> {
    let have: HashSet<&AclBinding> = target.iter().collect();
    wanted.into_iter().filter(|b| !have.contains(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::acls::DENY;
    use crate::config::Config;

    fn flow() -> Flow {
        let text = "[clusters.eu]\nbootstrap = \"127.0.0.1:1\"\n[clusters.us]\nbootstrap = \"127.0.0.1:2\"\n\
                    [[flows]]\nsource = \"eu\"\ntarget = \"us\"\ntopics = \"orders.*\"\nrename = \"prefix\"\n\
                    groups = \"app-.*\"\nsync_acls = true\n";
        Config::parse(text, "m.toml").unwrap().flows.remove(0)
    }

    fn b(resource_type: i8, name: &str, pattern_type: i8, operation: i8, permission: i8) -> AclBinding {
        AclBinding {
            resource_type,
            name: name.into(),
            pattern_type,
            principal: "User:alice".into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    #[test]
    fn mirrormaker_2_rules_and_group_read() {
        let f = flow();
        assert!(f.sync_acls);
        let mirrored: HashSet<String> = ["orders".to_owned()].into();
        let source = vec![
            b(RESOURCE_TOPIC, "orders", PATTERN_LITERAL, OP_WRITE, ALLOW), // dropped
            b(RESOURCE_TOPIC, "orders", PATTERN_LITERAL, OP_ALL, ALLOW),   // -> READ
            b(RESOURCE_TOPIC, "orders", PATTERN_LITERAL, OP_READ, ALLOW),  // same as above once renamed
            b(RESOURCE_TOPIC, "orders", PATTERN_LITERAL, OP_WRITE, DENY),  // kept
            b(RESOURCE_TOPIC, "orders", 4, OP_READ, ALLOW),                // prefixed: not copied
            b(RESOURCE_TOPIC, "payments", PATTERN_LITERAL, OP_READ, ALLOW), // not mirrored
            b(RESOURCE_GROUP, "app-billing", PATTERN_LITERAL, OP_ALL, ALLOW), // -> READ
            b(RESOURCE_GROUP, "app-billing", PATTERN_LITERAL, OP_DELETE_FOR_TEST, DENY), // kept
            b(RESOURCE_GROUP, "other", PATTERN_LITERAL, OP_READ, ALLOW),   // group not synced
        ];
        let w = wanted(&f, &source, &mirrored);
        let want = vec![
            b(RESOURCE_TOPIC, "eu.orders", PATTERN_LITERAL, OP_READ, ALLOW),
            b(RESOURCE_TOPIC, "eu.orders", PATTERN_LITERAL, OP_WRITE, DENY),
            b(RESOURCE_GROUP, "app-billing", PATTERN_LITERAL, OP_READ, ALLOW),
            b(RESOURCE_GROUP, "app-billing", PATTERN_LITERAL, OP_DELETE_FOR_TEST, DENY),
        ];
        let mut sorted = want.clone();
        sorted.sort();
        assert_eq!(w, sorted);
        // only what the target lacks; what the target has of its own is not in play
        let target = vec![want[0].clone(), b(RESOURCE_TOPIC, "eu.orders", PATTERN_LITERAL, OP_WRITE, ALLOW)];
        let m = missing(w, &target);
        assert_eq!(m.len(), 3);
        assert!(!m.contains(&want[0]));
    }

    const OP_DELETE_FOR_TEST: i8 = 6;
}
