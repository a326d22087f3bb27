//! Configuration parsing and validation: every bad key gets one error naming it.

use super::*;

const GOOD: &str = r#"
[clusters.edge]
bootstrap = "127.0.0.1:9092,127.0.0.1:9093"
[clusters.cloud]
bootstrap = "127.0.0.1:9192"
[[flows]]
source = "edge"
target = "cloud"
topics = "orders\\..*"
exclude = ".*\\.internal"
rename = "prefix"
"#;

fn err(text: &str) -> String {
    Config::parse(text, "m.toml").unwrap_err().to_string()
}

#[test]
fn parses_the_documented_schema() {
    let c = Config::parse(GOOD, "m.toml").unwrap();
    let f = &c.flows[0];
    assert!(f.mirrors("orders.eu", false));
    assert!(!f.mirrors("orders.eu.internal", false));
    assert!(!f.mirrors("xorders.eu", false), "regex must match the whole name");
    assert!(!f.mirrors("orders.eu", true), "internal topics are never mirrored");
    assert_eq!(f.target_topic("orders.eu"), "edge.orders.eu");
    assert_eq!(f.start, StartAt::Earliest);
    assert_eq!(c.clusters["edge"].bootstrap_list().len(), 2);
}

#[test]
fn own_topics_and_prefixed_topics_from_the_target_are_never_mirrored() {
    let text = r#"
[clusters.a]
bootstrap = "127.0.0.1:1"
[clusters.b]
bootstrap = "127.0.0.1:2"
[[flows]]
source = "a"
target = "b"
topics = ".*"
rename = "prefix"
"#;
    let c = Config::parse(text, "m.toml").unwrap();
    let f = &c.flows[0];
    assert!(f.mirrors("orders", false));
    assert!(!f.mirrors("mirrorproxy.checkpoints", false));
    assert!(!f.mirrors("mirrorproxy.producers", false));
    assert!(!f.mirrors("mirrorproxy.bench.1796228162675", false), "bench topics are the bench's own");
    let mut narrowed = c.clone();
    crate::cli::narrow_for_bench(&mut narrowed, "a->b", "mirrorproxy.bench.1").unwrap();
    assert!(narrowed.flows[0].mirrors("mirrorproxy.bench.1", false), "the bench's mirror process mirrors it");
    assert!(!narrowed.flows[0].mirrors("mirrorproxy.bench.2", false) && !narrowed.flows[0].mirrors("orders", false));
    assert!(!f.mirrors("b.orders", false), "came from b");
    assert!(!f.mirrors("c.b.orders", false), "went through b before c");
    assert!(f.mirrors("c.orders", false));
    assert!(f.mirrors("orders.b", false), "the last part is the topic's own name");
    assert_eq!(f.loop_guard, ProvenanceMode::Registry);
    let how = f.loop_prevention();
    assert!(how.contains("producer registry ('mirrorproxy.producers'") && how.contains("prefix rule"), "{how}");
    assert!(f.provenance.is_none(), "no header stamping unless asked for");
    // identity names: a topic called b.orders is an ordinary topic
    let c = Config::parse(&text.replace("rename = \"prefix\"", ""), "m.toml").unwrap();
    assert!(c.flows[0].mirrors("b.orders", false));
    assert!(!c.flows[0].mirrors("mirrorproxy.producers", false));
}

#[test]
fn unknown_key_is_named() {
    let e = err(&GOOD.replace("rename = \"prefix\"", "renam = \"prefix\""));
    assert!(e.contains("renam"), "{e}");
    let e = err(&format!("{GOOD}\n[tuning]\nbufer_bytes = 5\n"));
    assert!(e.contains("bufer_bytes"), "{e}");
}

#[test]
fn rebatching_is_parsed_and_its_mistakes_are_named() {
    let on = GOOD.replace("rename = \"prefix\"", "rebatch_max_bytes = 1048576\nrebatch_compression = \"zstd\"");
    let c = Config::parse(&on, "m.toml").unwrap();
    let explicit = Rebatch { max_bytes: 1 << 20, compression: Some(Compression::Zstd), small_below: None };
    assert_eq!(c.flows[0].rebatch, Some(explicit));
    let coalescing = Rebatch { max_bytes: 256 << 10, compression: None, small_below: Some(12 << 10) };
    assert_eq!(Config::parse(GOOD, "m.toml").unwrap().flows[0].rebatch, Some(coalescing), "coalescing by default");
    let off = GOOD.replace("rename = \"prefix\"", "coalesce_below_bytes = 0");
    assert_eq!(Config::parse(&off, "m.toml").unwrap().flows[0].rebatch, None, "pass-through asked for");
    let small = GOOD.replace("rename = \"prefix\"", "coalesce_below_bytes = 4096\ncoalesce_max_bytes = 65536");
    assert_eq!(
        Config::parse(&small, "m.toml").unwrap().flows[0].rebatch,
        Some(Rebatch { max_bytes: 64 << 10, compression: None, small_below: Some(4096) })
    );
    let e = err(&GOOD.replace("rename = \"prefix\"", "coalesce_max_bytes = 1000"));
    assert!(e.contains("flows[0].coalesce_max_bytes") && e.contains("coalesce_below_bytes (12288)"), "{e}");
    let e = err(&on.replace("\"zstd\"", "\"brotli\""));
    assert!(e.contains("flows[0].rebatch_compression") && e.contains("brotli"), "{e}");
    let e = err(&GOOD.replace("rename = \"prefix\"", "rebatch_compression = \"lz4\""));
    assert!(e.contains("flows[0].rebatch_compression") && e.contains("rebatch_max_bytes"), "{e}");
    let e = err(&on.replace("1048576", "100"));
    assert!(e.contains("flows[0].rebatch_max_bytes") && e.contains("between 1024"), "{e}");
}

const SECURE: &str = r#"
[clusters.edge]
bootstrap = "127.0.0.1:9092"
[clusters.cloud]
bootstrap = "kafka.example:9093"
link = "remote"
[clusters.cloud.tls]
ca = "tls/ca.pem"
cert = "/abs/client.pem"
key = "/abs/client.key"
server_name = "kafka.example"
[clusters.cloud.sasl]
mechanism = "SCRAM-SHA-512"
username = "mirror"
password_env = "MIRRORPROXY_TEST_UNSET_PASSWORD_VAR"
[[flows]]
source = "edge"
target = "cloud"
topics = ".*"
"#;

#[test]
fn parses_tls_and_sasl() {
    let c = Config::parse(SECURE, "/etc/mirror/m.toml").unwrap();
    let cloud = &c.clusters["cloud"];
    assert_eq!(cloud.link, Link::Remote);
    let files = cloud.tls_files().unwrap();
    assert_eq!(files.ca.as_deref(), Some(Path::new("/etc/mirror/tls/ca.pem")), "relative to the config file");
    assert_eq!(files.cert.as_deref(), Some(Path::new("/abs/client.pem")));
    assert_eq!(files.server_name.as_deref(), Some("kafka.example"));
    let sasl = cloud.sasl.as_ref().unwrap();
    assert_eq!(sasl.mechanism, Mechanism::ScramSha512);
    assert!(c.clusters["edge"].tls.is_none() && c.clusters["edge"].link == Link::Local);
    let e = cloud.sasl_credentials().unwrap_err();
    assert!(e.contains("MIRRORPROXY_TEST_UNSET_PASSWORD_VAR") && e.contains("not set"), "{e}");
    assert!(cloud.plaintext_warning().is_none());
}

#[test]
fn password_file_is_read_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cr3t-Pa55\n").unwrap();
    let cfg = dir.path().join("m.toml");
    let text = SECURE.replace("password_env = \"MIRRORPROXY_TEST_UNSET_PASSWORD_VAR\"", "password_file = \"pw\"");
    let c = Config::parse(&text, cfg.to_str().unwrap()).unwrap();
    let creds = c.clusters["cloud"].sasl_credentials().unwrap().unwrap();
    assert_eq!(creds.password.expose(), "s3cr3t-Pa55");
    let shown = format!("{c:?} {creds:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn remote_without_tls_is_refused_unless_allowed() {
    let plain = r#"
[clusters.edge]
bootstrap = "127.0.0.1:9092"
[clusters.cloud]
bootstrap = "127.0.0.1:9093"
link = "remote"
[[flows]]
source = "edge"
target = "cloud"
topics = ".*"
"#;
    let e = err(plain);
    assert!(e.contains("clusters.cloud") && e.contains("allow_plaintext"), "{e}");
    let c = Config::parse(&plain.replace("link = \"remote\"", "link = \"remote\"\nallow_plaintext = true"), "m.toml")
        .unwrap();
    assert!(c.clusters["cloud"].plaintext_warning().unwrap().contains("unencrypted"));
    assert!(c.clusters["edge"].plaintext_warning().is_none());
}

#[test]
fn tls_and_sasl_mistakes_are_named() {
    let e = err(&SECURE.replace("key = \"/abs/client.key\"\n", ""));
    assert!(e.contains("clusters.cloud.tls") && e.contains("cert and key"), "{e}");
    let e = err(&SECURE.replace("server_name", "servername"));
    assert!(e.contains("servername"), "{e}");
    let e = err(&SECURE.replace("SCRAM-SHA-512", "SCRAM-MD5"));
    assert!(e.contains("SCRAM-MD5"), "{e}");
    let e = err(&SECURE.replace("password_env = \"MIRRORPROXY_TEST_UNSET_PASSWORD_VAR\"", ""));
    assert!(e.contains("clusters.cloud.sasl") && e.contains("password_env"), "{e}");
    let e = err(&SECURE.replace("[clusters.cloud.tls]", "verify = false\n[clusters.cloud.tls]"));
    assert!(e.contains("verify"), "{e}");
    let e = err(&SECURE.replace("mechanism = \"SCRAM-SHA-512\"", "mechanism = \"PLAIN\"\npassword = \"x\""));
    assert!(e.contains("password"), "inline passwords are not a thing: {e}");
}

#[test]
fn unknown_alias_invalid_regex_and_bad_toml() {
    let e = err(&GOOD.replace("target = \"cloud\"", "target = \"clod\""));
    assert!(e.contains("flows[0].target") && e.contains("clod"), "{e}");
    let e = err(&GOOD.replace("orders\\\\..*", "orders(["));
    assert!(e.contains("flows[0].topics") && e.contains("invalid regex"), "{e}");
    let e = err("[clusters.a\nbootstrap=1");
    assert!(e.contains("m.toml") && e.contains("not valid"), "{e}");
    let e = err(&GOOD.replace("127.0.0.1:9192", "localhost"));
    assert!(e.contains("clusters.cloud.bootstrap"), "{e}");
    let e = err(&format!("{GOOD}\n[tuning]\nacks = 0\n"));
    assert!(e.contains("tuning.acks"), "{e}");
    let e = err(&format!("{GOOD}\n[tuning]\nworker_threads = 5000\n"));
    assert!(e.contains("tuning.worker_threads"), "{e}");
    let one = Config::parse(&format!("{GOOD}\n[tuning]\nworker_threads = 1\n"), "m.toml").unwrap();
    assert_eq!(one.tuning.worker_threads, 1);
    assert_eq!(one.tuning.runtime_threads(4, 8), 1, "a set value is kept");
    let auto = Config::parse(GOOD, "m.toml").unwrap().tuning;
    assert_eq!(auto.worker_threads, 0);
    assert_eq!(auto.runtime_threads(1, 8), 1, "one flow: one thread");
    assert_eq!(auto.runtime_threads(3, 8), 3, "one per flow");
    assert_eq!(auto.runtime_threads(12, 8), 8, "at most one per core");
    assert_eq!(auto.runtime_threads(0, 8), 1, "at least one");
}
