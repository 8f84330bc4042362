"""Signed bundles and atomic installs on the device: ``keygen``, ``sign``, ``install``,
``rollback`` and ``status``."""

from __future__ import annotations

import click

from edgeexit.cli.app import echo_result, exit_with, main
from edgeexit.cli.formats import bundle_line, install_text, status_text
from edgeexit.cli.options import into_option, json_option, trusted_option
from edgeexit.errors import ExitStatus


@main.command()
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (0600); the public key goes to OUT.pub.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(out_path, as_json):
    """Make an ed25519 signing key pair for `edgeexit sign` (refuses to overwrite).

    Keep the private key on the host; copy OUT.pub into the device's trusted-keys directory.
    """
    from edgeexit.runtime.signing import keygen as make_key

    priv, pub, fp = make_key(out_path)
    echo_result(as_json, {"private_key": str(priv), "public_key": str(pub), "fingerprint": fp},
                lambda: f"wrote {priv} (private, keep it secret) and {pub} (public), fingerprint {fp}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="Private key written by `edgeexit keygen`.")
@click.option("--bundle-version", type=click.IntRange(min=1, max=2**63 - 1), default=None,
              help="Set the manifest's bundle_version before signing (a device installs only "
                   "newer versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sign(bundle, key, bundle_version, as_json):
    """Sign a bundle directory: write manifest.sig (ed25519 over manifest.json's exact bytes).

    The manifest lists every file with its sha256 and size (sizes are added if missing), so the
    signature covers the whole bundle. BUNDLE.tar.gz beside it is packed again.
    """
    from edgeexit.runtime.signing import sign_bundle

    r = sign_bundle(bundle, key, bundle_version=bundle_version)
    echo_result(as_json, r, lambda: f"signed {r['bundle']} (bundle version {r['bundle_version']}) "
                f"with key {r['key_fingerprint'][:16]}..."
                + (f"; packed {r['archive']}" if "archive" in r else ""))


def _install_config(trusted_keys, allow_rollback=False, strict=False):
    from edgeexit.runtime.install import InstallConfig

    return InstallConfig(trusted_keys=None if trusted_keys is None else (trusted_keys,),
                         allow_rollback=allow_rollback, strict=strict)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@into_option
@trusted_option
@click.option("--allow-rollback", is_flag=True,
              help="Accept a bundle version not newer than the installed one.")
@click.option("--strict", is_flag=True,
              help="Refuse the bundle if a format's backend is not installed here (not replayed).")
@json_option
def install(archive, into, trusted_keys, allow_rollback, strict, as_json):
    """Install BUNDLE.tar.gz on this device, atomically, keeping the previous bundle.

    Unpacks safely into a new directory, verifies it (hashes and sizes, signature when required,
    bundle version newer than the installed one, golden replay on every installed backend), then
    switches DIR/current to it in one step and health-checks it (reverting by itself on failure).
    """
    from edgeexit.runtime.install import install_bundle

    r = install_bundle(archive, into, _install_config(trusted_keys, allow_rollback, strict))
    echo_result(as_json, r, lambda: install_text(r))


@main.command()
@into_option
@trusted_option
@json_option
def rollback(into, trusted_keys, as_json):
    """Switch back to the previous bundle (checked first); run it again to go forward."""
    from edgeexit.runtime.install import rollback as do_rollback

    r = do_rollback(into, _install_config(trusted_keys))
    echo_result(as_json, r, lambda: f"rolled back {r['into']}: now {bundle_line(r['current'])}\n"
                f"  previous: {bundle_line(r['previous'])}")


@main.command()
@into_option
@click.option("--check", is_flag=True, help="Also check the current bundle's hashes and sizes.")
@json_option
def status(into, check, as_json):
    """Show the bundle an install directory serves and the one it can roll back to."""
    from edgeexit.runtime.install import status as install_status

    r = install_status(into, check=check)
    echo_result(as_json, r, lambda: status_text(r, check))
    if check and r["current"] and not r["current"].get("hashes_ok"):
        exit_with(ExitStatus.MISMATCH)


