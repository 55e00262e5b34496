//! The guest side of Tessera's WebAssembly resources: custom resources written in Rust, compiled
//! to `wasm32-unknown-unknown`, loaded by the `tessera` host.
//!
//! This crate is a skeleton until the wasm resources issue: it holds the WIT package in `wit/`
//! (shared with the host) and will hold the `Resource` trait, the export macro and typed table
//! helpers. It must never depend on a host crate.

/// The WIT package this SDK targets, as the host reads it.
pub const WIT: &str = include_str!("../wit/tessera.wit");

#[cfg(test)]
mod tests {
    #[test]
    fn wit_names_the_package() {
        assert!(super::WIT.contains("package tessera:resource@0.1.0;"));
    }
}
