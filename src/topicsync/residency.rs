//! Data residency: `local_only` on a cluster names topics that never leave it (data
//! that regulation keeps in its region). The rule itself is one line of the one topic
//! filter, [`crate::config::Flow::mirrors`], so no path (engine, config sync, group
//! sync, `status`, `offsets`) can forget it; deny wins over every flow's `topics`.
//! This file explains it to the operator: what `check` lists as withheld, and the
//! warning at start for a flow whose `topics` names a local-only topic literally
//! (a contradiction in the config that the operator should resolve).

use crate::config::Flow;

/// Why a source topic that the flow's `topics` matches is not mirrored because of
/// `local_only`; None when it is mirrored or `topics` does not match it.
#[must_use]
pub fn withheld(flow: &Flow, topic: &str, is_internal: bool) -> Option<String> {
    if is_internal || !flow.topics.is_match(topic) {
        return None;
    }
    let l = flow.local_only.as_ref()?;
    l.is_match(topic).then(|| {
        let re = unanchored(l.as_str());
        format!("local_only of cluster '{}' ('{re}'): never leaves it", flow.source)
    })
}

/// The topic names the flow's `topics` regex spells out literally (its top-level
/// alternatives without regex syntax, `\.` read as a dot) that are local-only.
#[must_use]
pub fn literal_local_only(flow: &Flow) -> Vec<String> {
    let Some(l) = &flow.local_only else { return Vec::new() };
    split_alternatives(unanchored(flow.topics.as_str()))
        .into_iter()
        .filter_map(|alt| literal(&alt))
        .filter(|t| l.is_match(t))
        .collect()
}

/// The regex as written in the config (the config anchors it as `^(?:...)$`).
fn unanchored(re: &str) -> &str {
    re.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(re)
}

/// Top-level `|` alternatives of a regex (not inside groups or classes).
fn split_alternatives(re: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut depth, mut class, mut escaped) = (0i32, false, false);
    for c in re.chars() {
        let cur = out.last_mut().expect("never empty");
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' => class = true,
            ']' => class = false,
            '(' if !class => depth += 1,
            ')' if !class => depth -= 1,
            '|' if !class && depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out
}

/// The name an alternative matches when it is a literal, else None.
fn literal(alt: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = alt.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let n = chars.next()?;
                if n.is_ascii_alphanumeric() {
                    return None; // \d, \w, ...: a class, not a literal
                }
                out.push(n);
            }
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => return None,
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn flow(topics: &str, local_only: &str) -> Flow {
        let text = format!(
            "[clusters.eu]\nbootstrap = \"127.0.0.1:1\"\nlocal_only = '{local_only}'\n[clusters.us]\nbootstrap = \"127.0.0.1:2\"\n\
             [[flows]]\nsource = \"eu\"\ntarget = \"us\"\ntopics = '{topics}'\n"
        );
        Config::parse(&text, "m.toml").unwrap().flows.remove(0)
    }

    #[test]
    fn local_only_wins_over_topics() {
        let f = flow(".*", r"pii\..*|customers");
        assert!(f.mirrors("orders", false));
        assert!(!f.mirrors("pii.emails", false));
        assert!(!f.mirrors("customers", false));
        assert!(f.mirrors("customers2", false), "whole-name match");
        assert!(withheld(&f, "pii.emails", false).unwrap().contains("local_only of cluster 'eu'"));
        assert_eq!(withheld(&f, "orders", false), None);
    }

    #[test]
    fn a_literal_local_only_topic_in_topics_is_found() {
        let f = flow(r"orders|pii\.emails|events\..*", r"pii\..*");
        assert_eq!(literal_local_only(&f), ["pii.emails"]);
        assert!(
            literal_local_only(&flow(r"pii\..*|(pii\.a|b)", r"pii\..*")).is_empty(),
            "patterns are not literal names"
        );
    }

    #[test]
    fn invalid_local_only_is_one_error_naming_the_key() {
        let text = "[clusters.eu]\nbootstrap = \"127.0.0.1:1\"\nlocal_only = \"pii([\"\n[clusters.us]\nbootstrap = \"127.0.0.1:2\"\n\
                    [[flows]]\nsource = \"us\"\ntarget = \"eu\"\ntopics = \".*\"\n";
        let e = Config::parse(text, "m.toml").unwrap_err().to_string();
        assert!(e.contains("clusters.eu.local_only") && e.contains("invalid regex") && !e.contains('\n'), "{e}");
        let text = text
            .replace("local_only = \"pii([\"", "")
            .replace("topics = \".*\"", "topics = \".*\"\nconfig_exclude = \"a(\"");
        let e = Config::parse(&text, "m.toml").unwrap_err().to_string();
        assert!(e.contains("flows[0].config_exclude") && e.contains("invalid regex") && !e.contains('\n'), "{e}");
    }
}
