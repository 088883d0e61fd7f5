package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// Client-side envelope encryption of a backup's data object.
//
// Each backup's data object (the dump, or a physical base) is an age file
// whose only header stanza is a marker: its file key, random per backup,
// is not in the object at all. The manifest carries that file key
// encrypted with age to the recipients (Encryption.WrappedKey). Reading
// unwraps the key with an identity, then decrypts the object with it; age's
// header MAC rejects a wrong key before a byte of data is returned.
// Rotating recipients rewraps the key and rewrites the manifest only.
//
// The object is compressed first and encrypted second; its size and sha256
// in the manifest are of the encrypted bytes, so a checksum verification
// needs no key.

// EncryptionScheme names the envelope format in manifests.
const EncryptionScheme = "age-envelope-v1"

// envelopeStanza marks the data object's header: "the file key is in the
// manifest".
const envelopeStanza = "spiredb-envelope"

// Encryption describes an encrypted backup in its manifest.
type Encryption struct {
	Scheme string `json:"scheme"`
	// Recipients are the public keys the data key is wrapped to.
	Recipients []string `json:"recipients"`
	// WrappedKey is the backup's data key, encrypted with age to the
	// recipients (ASCII-armored).
	WrappedKey string `json:"wrapped_key"`
}

// Keys are the age recipients new backups are encrypted to, and the
// identities that open encrypted ones. The zero value encrypts nothing and
// opens nothing.
type Keys struct {
	Recipients []age.Recipient
	Identities []age.Identity
}

// ErrNoIdentity is returned when an encrypted backup is read without an
// identity.
var ErrNoIdentity = errors.New("no identity given (--identity FILE, or $SPIREDB_IDENTITY_FILE)")

// ErrWrongIdentity is returned when none of the identities given opens an
// encrypted backup.
var ErrWrongIdentity = errors.New("none of the given identities opens it")

// ParseRecipients reads age recipients: each entry is a public key
// (age1…) or, when it names a file, every recipient in it (one per line,
// # comments).
func ParseRecipients(entries []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for _, e := range entries {
		if strings.HasPrefix(e, "age1") && !strings.ContainsAny(e, "/\\") {
			rs, err := age.ParseRecipients(strings.NewReader(e))
			if err != nil {
				// an age1… entry is a public key: quoting it is safe
				return nil, fmt.Errorf("invalid recipient %q: %w", e, err)
			}
			out = append(out, rs...)
			continue
		}
		f, err := os.Open(e)
		if err != nil {
			if strings.HasPrefix(e, "AGE-SECRET-KEY") {
				return nil, errors.New("a recipient is a public key (age1…), and this looks like a secret key: not used")
			}
			return nil, fmt.Errorf("recipients: %w", err)
		}
		rs, err := age.ParseRecipients(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("recipients file %s: %w", e, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// ReadIdentities reads age identity files (AGE-SECRET-KEY-1… lines). Errors
// name the file, never its content.
func ReadIdentities(files []string) ([]age.Identity, error) {
	var out []age.Identity
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		ids, err := age.ParseIdentities(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("identity file %s: %w", name, err)
		}
		out = append(out, ids...)
	}
	return out, nil
}

// captureRecipient takes age's file key for the data object and leaves only
// a marker in its header.
type captureRecipient struct{ fileKey []byte }

func (c *captureRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	c.fileKey = bytes.Clone(fileKey)
	return []*age.Stanza{{Type: envelopeStanza}}, nil
}

// sealer encrypts a data object; Close flushes age's last chunk.
type sealer struct {
	io.WriteCloser
	enc *Encryption
}

// seal starts an encrypted data object on w for the recipients and returns
// the writer and the manifest's Encryption (the wrapped data key).
func seal(w io.Writer, recipients []age.Recipient) (*sealer, error) {
	c := &captureRecipient{}
	aw, err := age.Encrypt(w, c)
	if err != nil {
		return nil, fmt.Errorf("starting encryption: %w", err)
	}
	enc, err := wrapKey(c.fileKey, recipients)
	if err != nil {
		return nil, err
	}
	return &sealer{WriteCloser: aw, enc: enc}, nil
}

// wrapKey encrypts a data key to the recipients.
func wrapKey(key []byte, recipients []age.Recipient) (*Encryption, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no recipients to encrypt to")
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, recipients...)
	if err != nil {
		return nil, fmt.Errorf("wrapping the data key: %w", err)
	}
	if _, err := w.Write(key); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	enc := &Encryption{Scheme: EncryptionScheme, WrappedKey: buf.String()}
	for _, r := range recipients {
		if s, ok := r.(fmt.Stringer); ok {
			enc.Recipients = append(enc.Recipients, s.String())
		}
	}
	return enc, nil
}

// unwrapKey returns the data key of an encrypted backup.
func unwrapKey(m *Manifest, ids []age.Identity) ([]byte, error) {
	e := m.Encryption
	if e.Scheme != EncryptionScheme {
		return nil, fmt.Errorf("backup %s is encrypted with %q, which this spiredb does not read", m.ID, e.Scheme)
	}
	r, err := decryptWith(armor.NewReader(strings.NewReader(e.WrappedKey)), ids)
	if errors.Is(err, ErrWrongIdentity) {
		return nil, fmt.Errorf("backup %s is encrypted to %s: %w", m.ID, strings.Join(e.Recipients, ", "), err)
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s is encrypted: %w", m.ID, err)
	}
	key, err := io.ReadAll(io.LimitReader(r, 64))
	if err != nil {
		return nil, fmt.Errorf("backup %s: unwrapping its data key: %w", m.ID, err)
	}
	return key, nil
}

// decryptWith opens an age file encrypted to recipients with one of ids:
// ErrNoIdentity without any, ErrWrongIdentity when none opens it. The
// wrapped keys of backups and archived WAL files are read through it.
func decryptWith(r io.Reader, ids []age.Identity) (io.Reader, error) {
	if len(ids) == 0 {
		return nil, ErrNoIdentity
	}
	pr, err := age.Decrypt(r, ids...)
	if nm := (*age.NoIdentityMatchError)(nil); errors.As(err, &nm) {
		return nil, ErrWrongIdentity
	}
	if err != nil {
		return nil, fmt.Errorf("decrypting: %w", err)
	}
	return pr, nil
}

// Unlock prepares an encrypted backup for reading with the identities:
// it unwraps the data key, so that a wrong or missing key fails here,
// before anything is written anywhere. A backup that is not encrypted
// needs nothing.
func (m *Manifest) Unlock(ids []age.Identity) error {
	if m.Encryption == nil || m.dataKeyPlain != nil {
		return nil
	}
	key, err := unwrapKey(m, ids)
	if err != nil {
		return err
	}
	m.dataKeyPlain = key
	return nil
}

// Encrypted reports whether the backup's data object is encrypted.
func (m *Manifest) Encrypted() bool { return m.Encryption != nil }

// opened returns the plaintext of the stored data object r (still
// compressed): r itself for an unencrypted backup. Unlock must have run.
func (m *Manifest) opened(r io.Reader) (io.Reader, error) {
	if m.Encryption == nil {
		return r, nil
	}
	if m.dataKeyPlain == nil {
		return nil, fmt.Errorf("backup %s is encrypted: %w", m.ID, ErrNoIdentity)
	}
	pr, err := age.Decrypt(r, age.NewInjectedFileKeyIdentity(m.dataKeyPlain))
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %w", m.dataKey(), err)
	}
	return pr, nil
}

// Rekey rewraps an encrypted backup's data key to new recipients; the data
// object is not touched. The caller writes the manifest.
func (m *Manifest) Rekey(ids []age.Identity, recipients []age.Recipient) error {
	if m.Encryption == nil {
		return fmt.Errorf("backup %s is not encrypted", m.ID)
	}
	if err := m.Unlock(ids); err != nil {
		return err
	}
	enc, err := wrapKey(m.dataKeyPlain, recipients)
	if err != nil {
		return err
	}
	m.Encryption = enc
	return nil
}

// encodingWriter returns the writer a data object is written through:
// compress (when not nil) and then, with recipients, encrypt, into w.
// Close flushes both. enc is the manifest's Encryption, nil without
// recipients. With recipients it writes age's header to w at once.
func encodingWriter(w io.Writer, compress func(io.Writer) (io.WriteCloser, error), recipients []age.Recipient) (io.WriteCloser, *Encryption, error) {
	var stack []io.WriteCloser
	var enc *Encryption
	if len(recipients) > 0 {
		s, err := seal(w, recipients)
		if err != nil {
			return nil, nil, err
		}
		stack, enc, w = append(stack, s), s.enc, s
	}
	if compress != nil {
		c, err := compress(w)
		if err != nil {
			return nil, nil, err
		}
		stack = append(stack, c)
		w = c
	}
	return &layered{Writer: w, stack: stack}, enc, nil
}

// layered closes its writers innermost (the last added) first.
type layered struct {
	io.Writer
	stack []io.WriteCloser
}

func (l *layered) Close() error {
	var err error
	for i := len(l.stack) - 1; i >= 0; i-- {
		if cerr := l.stack[i].Close(); err == nil {
			err = cerr
		}
	}
	return err
}

func zstdDump(w io.Writer) (io.WriteCloser, error) { return zstdWriter(w, levelDump, threadsDump) }

// RekeyResult is what Rekey rewrote.
type RekeyResult struct {
	// Rekeyed are the backups whose manifest now wraps the data key to the
	// new recipients.
	Rekeyed []string `json:"rekeyed"`
	// Unencrypted are backups with nothing to rekey (left as they are).
	Unencrypted []string `json:"unencrypted,omitempty"`
	Recipients  []string `json:"recipients"`
}

// Rekey rewraps the data key of the backup id (every backup of the store
// when all) to recipients, opening it with ids, and rewrites only the
// manifests: the data objects are not read or written. Every key is
// unwrapped before the first manifest is written, so an identity that
// opens only some of them changes nothing.
func Rekey(ctx context.Context, s Store, id string, all bool, keys Keys, logger *slog.Logger) (*RekeyResult, error) {
	if all == (id != "") {
		return nil, errors.New("name a backup with --id ID or --all (one of them)")
	}
	if len(keys.Recipients) == 0 {
		return nil, errors.New("no new recipients: pass --recipient")
	}
	if err := checkWrite(ctx, s); err != nil {
		return nil, err
	}
	inv, err := Inspect(ctx, s)
	if err != nil {
		return nil, err
	}
	inv.Warn(orDiscard(logger))
	res := &RekeyResult{Rekeyed: []string{}}
	var todo []Manifest
	for _, m := range inv.Backups {
		if !all && m.ID != id {
			continue
		}
		if m.Encryption == nil {
			res.Unencrypted = append(res.Unencrypted, m.ID)
			continue
		}
		if err := m.Rekey(keys.Identities, keys.Recipients); err != nil {
			return nil, fmt.Errorf("%w; no manifest was changed", err)
		}
		todo = append(todo, m)
	}
	if !all && len(todo)+len(res.Unencrypted) == 0 {
		return nil, fmt.Errorf("no backup %s in %s", id, s)
	}
	for _, m := range todo {
		// rewrite the stored manifest with only its encryption replaced, so
		// that fields this spiredb does not know survive
		var raw map[string]json.RawMessage
		if err := getJSON(ctx, s, manifestKey(m.ID), &raw); err != nil {
			return res, err
		}
		b, err := json.Marshal(m.Encryption)
		if err != nil {
			return res, err
		}
		raw["encryption"] = b
		if err := putJSON(ctx, s, manifestKey(m.ID), raw); err != nil {
			return res, fmt.Errorf("rewriting the manifest of %s (rekeyed so far: %s): %w", m.ID, strings.Join(res.Rekeyed, ", "), err)
		}
		res.Rekeyed = append(res.Rekeyed, m.ID)
		res.Recipients = m.Encryption.Recipients
		orDiscard(logger).Info("backup rekeyed", "id", m.ID, "recipients", strings.Join(m.Encryption.Recipients, ","))
	}
	if res.Recipients == nil {
		res.Recipients = []string{}
	}
	return res, nil
}
