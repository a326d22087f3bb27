//! The example configurations in examples/ are part of the documentation: they must
//! stay valid as the schema evolves.

use mirrorproxy::config::{Config, Rename};

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.flows.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected the active-standby, hub-and-spoke and migration examples");
}

#[test]
fn hub_and_spoke_example_prefixes_by_region() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hub-and-spoke.toml");
    let config = Config::load(&dir).unwrap();
    let eu = config.flows.iter().find(|f| f.source == "eu").unwrap();
    assert_eq!(eu.rename, Rename::Prefix);
    assert_eq!(eu.target_topic("orders"), "eu.orders");
    assert!(eu.mirrors("payments", false) && !eu.mirrors("payments-x", false));
}
