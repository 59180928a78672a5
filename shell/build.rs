//! Rebuilds the shell when a file under `migrations/` changes: `sqlx::migrate!` embeds them at
//! compile time, and cargo cannot see a macro's inputs, so a migration added or edited without
//! a code change would otherwise be missed by an incremental build (sqlx's documented remedy,
//! `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
