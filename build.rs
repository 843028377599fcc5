// sqlx::migrate! embeds migrations/ at compile time but does not tell cargo to look at it:
// without this, a migration added to a tree that was built before is not embedded.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
