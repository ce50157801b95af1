//! Names and label values derived from a run's name, kept within Kubernetes' limits for any
//! valid FlowRun name (a DNS subdomain of up to 253 characters). One rule for all of them,
//! [`fit`]: a value within the limit stays as it is; a longer one becomes a prefix of it, a dash
//! and a hash of the whole value, so two long values never meet on one name. Whatever reads a
//! derived value back (a label selector) derives it with the same function; where the full
//! name is needed, it is kept in an annotation beside the label.
//!
//! Pure and dependency-free: the operator (pods, labels), `kubectl cairn` (FlowEvent names) and
//! the SDK (child run names) share it.

/// A label value: at most 63 characters.
pub const MAX_LABEL_VALUE: usize = 63;
/// An object name (a DNS subdomain), such as a FlowRun's or a Secret's: at most 253.
pub const MAX_NAME: usize = 253;
/// A pod name kept to a DNS label's 63 characters, so the pod's hostname is its name.
pub const MAX_POD_NAME: usize = 63;
/// Hex digits of the hash a long value ends with (40 bits).
const HASH_DIGITS: usize = 10;

/// `value` itself when it has at most `max` characters; otherwise its first characters, a dash
/// and a hash of all of it, `max` characters at most. Dashes and dots are not left before the
/// dash, so a DNS name (or label value) stays one. `max` must leave room for the hash.
pub fn fit(value: &str, max: usize) -> String {
    assert!(
        max > HASH_DIGITS + 1,
        "no room for a hash in {max} characters"
    );
    if value.chars().count() <= max {
        return value.to_owned();
    }
    let hash = format!(
        "{:0width$x}",
        fnv1a(value.as_bytes()) >> (64 - 4 * HASH_DIGITS),
        width = HASH_DIGITS
    );
    let keep = max - HASH_DIGITS - 1;
    let prefix: String = value.chars().take(keep).collect();
    let prefix = prefix.trim_end_matches(['-', '.', '_']);
    match prefix.is_empty() {
        true => hash,
        false => format!("{prefix}-{hash}"),
    }
}

/// A label value naming a run (or anything as long): see [`fit`].
pub fn label_value(name: &str) -> String {
    fit(name, MAX_LABEL_VALUE)
}

/// The pod of one attempt of a run: `<run>-a<attempt>`, the run's part fitted so the whole is
/// at most [`MAX_POD_NAME`] characters.
pub fn pod_name(run: &str, attempt: i32) -> String {
    let suffix = format!("-a{attempt}");
    format!("{}{suffix}", fit(run, MAX_POD_NAME - suffix.len()))
}

/// The name of a child run: `<parent>-<flow>-<n>`, the n-th child of `flow` the parent spawned.
/// The parent's part is fitted when the whole would pass [`MAX_NAME`], so the flow and number
/// stay readable; the child's name is its FlowRun's name, so it must be a valid one.
pub fn child_run_name(parent: &str, flow: &str, occurrence: u32) -> String {
    let suffix = format!("-{flow}-{occurrence}");
    let room = MAX_NAME.saturating_sub(suffix.chars().count());
    match room > HASH_DIGITS + 1 {
        true => format!("{}{suffix}", fit(parent, room)),
        // A flow name too long to keep: fit the whole.
        false => fit(&format!("{parent}{suffix}"), MAX_NAME),
    }
}

/// FNV-1a, 64 bits: a stable hash without a dependency (the same in every release: names
/// derived from it must not change under existing objects).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `IsDNS1123Subdomain`, as the API server checks object names.
    fn is_dns_subdomain(name: &str) -> bool {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        name.len() <= 253
            && name.chars().all(ok)
            && name
                .split('.')
                .all(|l| l.starts_with(alnum) && l.ends_with(alnum))
    }

    /// `IsValidLabelValue`: at most 63, alphanumeric at both ends, `-_.` inside.
    fn is_label_value(value: &str) -> bool {
        let alnum = |c: char| c.is_ascii_alphanumeric();
        value.len() <= 63
            && (value.is_empty()
                || (value.starts_with(alnum)
                    && value.ends_with(alnum)
                    && value.chars().all(|c| alnum(c) || "-_.".contains(c))))
    }

    /// A valid FlowRun name of `len` characters, with dots and dashes where cuts may land.
    fn long_name(len: usize) -> String {
        let pattern = "research-agent.v2-";
        let mut name: String = pattern.chars().cycle().take(len).collect();
        name.replace_range(len - 1.., "z");
        assert!(is_dns_subdomain(&name));
        name
    }

    #[test]
    fn short_values_stay_as_they_are() {
        assert_eq!(fit("research-demo", 63), "research-demo");
        assert_eq!(label_value(&"a".repeat(63)), "a".repeat(63));
        assert_eq!(pod_name("research-demo", 2), "research-demo-a2");
        assert_eq!(
            child_run_name("research-demo", "summarize", 3),
            "research-demo-summarize-3"
        );
    }

    #[test]
    fn long_values_become_a_prefix_and_a_stable_hash() {
        let name = long_name(200);
        let label = label_value(&name);
        assert_eq!(label.len(), 63);
        assert!(name.starts_with(&label[..40]), "{label}");
        assert_eq!(label, label_value(&name), "stable");
        // Differing only past the prefix: still apart.
        let other = format!("{}y", &name[..199]);
        assert_ne!(label_value(&other), label);
        // The value for a given name never changes: existing objects carry it.
        assert_eq!(fit(&"x".repeat(80), 20), "xxxxxxxxx-6adea74572");
    }

    #[test]
    fn every_derived_value_is_valid_for_every_valid_run_name_length() {
        for len in 1..=253 {
            let name = long_name(len);
            let label = label_value(&name);
            assert!(is_label_value(&label), "{len}: label {label}");
            for attempt in [1, 12, 1000] {
                let pod = pod_name(&name, attempt);
                assert!(
                    pod.len() <= 63 && is_dns_subdomain(&pod),
                    "{len}: pod {pod}"
                );
                assert!(pod.ends_with(&format!("-a{attempt}")));
            }
            let child = child_run_name(&name, "summarize", 7);
            assert!(is_dns_subdomain(&child), "{len}: child {child}");
            assert!(child.ends_with("-summarize-7"), "{child}");
            // Grandchildren too.
            let grandchild = child_run_name(&child, "summarize", 1);
            assert!(is_dns_subdomain(&grandchild), "{len}: {grandchild}");
        }
    }

    #[test]
    fn children_of_a_long_parent_keep_distinct_names() {
        let parent = long_name(253);
        let names: std::collections::BTreeSet<String> = (1..=100)
            .map(|n| child_run_name(&parent, "summarize", n))
            .collect();
        assert_eq!(names.len(), 100);
        let pods: std::collections::BTreeSet<String> =
            names.iter().map(|child| pod_name(child, 1)).collect();
        assert_eq!(pods.len(), 100, "their pods too");
        let long_flow = "f".repeat(250);
        assert!(child_run_name(&parent, &long_flow, 1).len() <= 253);
    }
}
