// The migrations are embedded by `sqlx::migrate!`; a migration added to the folder must
// rebuild this crate, which cargo does not know without being told.
fn main() {
    println!("cargo:rerun-if-changed=../sql/migrations");
}
