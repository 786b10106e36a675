//! Defaults defined once: the files Rust does not read at run time (the IaC
//! and the docs) state the same defaults as the constants the code reads.
//! The flags' help is checked against the same constants in
//! `sql-writer`'s `config` tests; `deploy/azure/validate.py` checks the
//! IaC against `mirror_bus::DEFAULT_MAX_DELIVERIES` too.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every number following `after` in `text` (on the rest of its line).
fn numbers_after(text: &str, after: &str) -> Vec<u64> {
    text.match_indices(after)
        .filter_map(|(i, _)| {
            let rest = &text[i + after.len()..];
            let digits: String = rest
                .trim_start_matches([' ', '=', ':', '"'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn the_delivery_limit_is_stated_once_everywhere() {
    let want = u64::from(mirror_bus::DEFAULT_MAX_DELIVERIES);
    assert_eq!(
        u64::from(sql_writer::defaults::MAX_ATTEMPTS),
        want,
        "the writer's attempt limit is the broker's"
    );
    for (path, after, at_least) in [
        (
            "deploy/azure/servicebus.bicep",
            "param maxDeliveryCount int",
            1,
        ),
        (
            "deploy/azure/emulator/Config.json",
            "\"MaxDeliveryCount\"",
            2,
        ),
        ("docs/servicebus.md", "the IaC default is", 1),
    ] {
        let found = numbers_after(&read(path), after);
        assert!(
            found.len() >= at_least && found.iter().all(|&n| n == want),
            "{path}: `{after}` gives {found:?}, the code's default is {want}"
        );
    }
    // Terraform: the `default` inside `variable "max_delivery_count"`.
    let tf = read("deploy/azure/terraform/variables.tf");
    let block = tf
        .split("variable \"max_delivery_count\"")
        .nth(1)
        .and_then(|b| b.split("variable ").next())
        .expect("variables.tf declares max_delivery_count");
    assert_eq!(numbers_after(block, "default"), [want], "variables.tf");
}

#[test]
fn the_publishers_attempts_are_stated_as_the_code_has_them() {
    let want = u64::from(publisher::sink::PUBLISH_ATTEMPTS);
    let doc = read("docs/firestore-mapping.md");
    let found = numbers_after(&doc, "stops the process after");
    assert_eq!(found, [want], "docs/firestore-mapping.md");
}
