//! `weaver-operator crd` prints exactly the checked-in CRDs, so
//! `weaver-operator crd | kubectl apply -f -` installs what the tests test.

#[test]
fn crd_subcommand_prints_the_checked_in_manifests() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weaver-operator")).arg("crd").output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests");
    let expected: Vec<String> = weaver_crds::crdgen::crds()
        .iter()
        .map(|(file, _)| std::fs::read_to_string(dir.join(file)))
        .collect::<Result<_, _>>()?;
    assert_eq!(String::from_utf8(out.stdout)?, expected.join("---\n"));
    Ok(())
}
