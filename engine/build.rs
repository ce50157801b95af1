// The migrations are embedded by `sqlx::migrate!`; a migration added to the folder must
// rebuild this crate, which cargo does not know without being told. `migrations` and `.sqlx`
// here are symbolic links to ../sql/migrations and ../.sqlx, so that the package published to
// crates.io carries them (cargo packages what links point to).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
