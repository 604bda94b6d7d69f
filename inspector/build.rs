/// Builds the kernel programs (inspector-ebpf) for the BPF target with the
/// nightly toolchain and bpf-linker; the object lands in OUT_DIR/inspector.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "inspector-ebpf",
            root_dir: "../inspector-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
