// Empty library target: it lets the inspector crate name this crate as a build
// dependency, so cargo rebuilds the object when its sources change. The
// programs live in the `inspector` binary target (main.rs).
#![no_std]
