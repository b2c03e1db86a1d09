//! `iicp-conformance`: the conformance and interop suite; cases land with its issue.
