package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

type keygenOptions struct {
	output        string
	signingOutput string
}

func (a *app) keygenCmd() *cobra.Command {
	var o keygenOptions
	cmd := &cobra.Command{
		Use:   "keygen --output IDENTITY_FILE --signing-output SIGNING_KEY_FILE",
		Short: "Generate the keys of an encrypted repository",
		Long: `Generate an age X25519 identity and an Ed25519 signing key, and write two
files, readable by their owner only (mode 0600), never overwriting one:

  --output          the identity file, for the side that reads backups
                    (restore, verify --read-data, drill, list: --identity FILE).
                    It decrypts every set encrypted to its recipient: keep it
                    offline, in a secret manager. It also holds the signing key,
                    so that restore can sign the pre-restore sets it writes, and
                    so that manifests signed by it are trusted.
  --signing-output  the signing key file, for the snapshotting side (snapshot
                    --signing-key FILE, the agent's encryption.signing_key_file).
                    It signs manifests and names the recipient; it cannot decrypt.

The recipient (age1..., public) and the signer (tvsign1..., public) are printed.
Rotating keys: generate new ones, give the snapshotting side the new signing
key file, and append the new identity file to the old one (cat old new >
both): sets written before the rotation keep needing the old identity.
See docs/SECURITY.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runKeygen(&o) },
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "identity file to write (refused if it exists)")
	cmd.Flags().StringVar(&o.signingOutput, "signing-output", "", "signing key file to write for the snapshotting side (refused if it exists)")
	return cmd
}

func (a *app) runKeygen(o *keygenOptions) error {
	if o.output == "" || o.signingOutput == "" {
		return &usageError{"keygen needs --output IDENTITY_FILE and --signing-output SIGNING_KEY_FILE"}
	}
	if o.output == o.signingOutput {
		return &usageError{"--output and --signing-output must be different files: the snapshotting side must never get the identity"}
	}
	for _, p := range []string{o.output, o.signingOutput} {
		if _, err := os.Lstat(p); err == nil {
			return tenantvault.Inputf("%s already exists: keygen never overwrites a key (it may be the only copy)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return tenantvault.Inputf("%s: %v", p, err)
		}
	}
	idFile, signFile, recipient, signer, err := vault.NewKeyPair(time.Now().UTC().Format(time.RFC3339))
	if err != nil {
		return err
	}
	if err := writeNewFile(o.output, idFile); err != nil {
		return err
	}
	if err := writeNewFile(o.signingOutput, signFile); err != nil {
		os.Remove(o.output) // a half-made pair is of no use
		return err
	}
	if a.jsonOut {
		return a.printJSON(map[string]string{"identity_file": o.output, "signing_key_file": o.signingOutput, "recipient": recipient, "signer": signer})
	}
	fmt.Fprintf(a.stdout, "identity written to %s: keep it secret and offline (restore, verify --read-data, drill and list need it)\n", o.output)
	fmt.Fprintf(a.stdout, "signing key written to %s: for the snapshotting side (snapshot --signing-key, agent encryption.signing_key_file)\n", o.signingOutput)
	fmt.Fprintf(a.stdout, "recipient: %s\n", recipient)
	fmt.Fprintf(a.stdout, "signer:    %s\n", signer)
	return nil
}

// writeNewFile creates path with mode 0600, failing if it exists, and
// syncs it: a key that is lost in a crash after its recipient was used
// means backups nobody can read.
func writeNewFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return tenantvault.Inputf("%s already exists: keygen never overwrites a key", path)
		}
		return tenantvault.Inputf("cannot write %s: %v", path, err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
