//! Rebuilds the crate when the UI's built files change, so a release binary
//! embeds the current `dist/`. Without `dist/` (no `make ui` yet) the whole
//! folder is watched, so the crate is rebuilt once `dist/` appears.
fn main() {
    let watched = if std::path::Path::new("dist").is_dir() { "dist" } else { "." };
    println!("cargo:rerun-if-changed={watched}");
}
