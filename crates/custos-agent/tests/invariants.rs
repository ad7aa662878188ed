//! DESIGN.md: the agent never links the store, catalog or server crates.
//! This walks the resolved dependency graph (`cargo metadata`) from
//! custos-agent and fails if any of them is reachable.

use std::collections::{HashMap, HashSet};
use std::process::Command;

#[test]
fn agent_never_depends_on_store_catalog_or_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform", &host, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                // Normal and build dependencies are linked; dev-dependencies are not.
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].as_str() != Some("dev")))
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    let agent = packages.iter().find(|(_, n)| **n == "custos-agent").map(|(id, _)| *id).unwrap();
    let mut seen = HashSet::new();
    let mut stack = vec![agent];
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(nodes.get(id).into_iter().flatten().copied());
        }
    }
    let names: HashSet<&str> = seen.iter().map(|id| packages[id]).collect();
    for forbidden in ["custos-store", "custos-catalog", "custos-server", "datafusion", "sqlx"] {
        assert!(!names.contains(forbidden), "custos-agent must not depend on {forbidden}");
    }
    assert!(names.contains("custos-model"), "sanity: the walk found the model crate");
}

#[test]
fn the_example_agent_config_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
    let cfg = custos_agent::config::AgentConfig::from_path(&path).unwrap();
    let types: Vec<&str> = cfg.sources.iter().map(|s| s.type_name()).collect();
    assert_eq!(types, ["file", "inventory", "performance", "services", "crash"]);
}
