//! `iicp-directory`: placeholder until its issue lands; see `docs/architecture.md`.
