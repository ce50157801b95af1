//! Prints Cairn's CRDs as YAML: `cargo run -p cairn-crds --bin crdgen > crds/generated/crds.yaml`.
fn main() {
    print!("{}", cairn_crds::crds_yaml());
}
