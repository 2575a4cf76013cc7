package eventlog

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "refgc test"},
		NotBefore:             time.Unix(0, 0),
		NotAfter:              time.Unix(0, 0).Add(100 * 365 * 24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func applyOptions(t *testing.T, opts ConnectOptions) (nats.Options, error) {
	t.Helper()
	o := nats.GetDefaultOptions()
	list, err := connectOptions(opts)
	if err != nil {
		return o, err
	}
	for _, opt := range list {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

func TestConnectOptions(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	acct, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	userJWT, err := jwt.NewUserClaims(pub).Encode(acct)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "user.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		opts    ConnectOptions
		wantErr bool
		check   func(t *testing.T, o nats.Options)
	}{
		{"reconnect defaults", ConnectOptions{}, false, func(t *testing.T, o nats.Options) {
			if o.MaxReconnect != -1 || !o.AllowReconnect || o.ReconnectBufSize != ReconnectBufSize {
				t.Errorf("max reconnect %d, allow %v, buffer %d", o.MaxReconnect, o.AllowReconnect, o.ReconnectBufSize)
			}
			if o.Secure || o.Token != "" || o.User != "" {
				t.Errorf("unexpected security: %+v", o)
			}
		}},
		{"token and name", ConnectOptions{Token: "t0k", Name: "refgc"}, false, func(t *testing.T, o nats.Options) {
			if o.Token != "t0k" || o.Name != "refgc" {
				t.Errorf("token %q name %q", o.Token, o.Name)
			}
		}},
		{"user and password", ConnectOptions{User: "u", Password: "p"}, false, func(t *testing.T, o nats.Options) {
			if o.User != "u" || o.Password != "p" {
				t.Errorf("user %q password %q", o.User, o.Password)
			}
		}},
		{"creds file", ConnectOptions{CredsFile: credsFile}, false, func(t *testing.T, o nats.Options) {
			if o.UserJWT == nil || o.SignatureCB == nil {
				t.Fatal("creds file not wired into the JWT and signature callbacks")
			}
			if got, err := o.UserJWT(); err != nil || got != userJWT {
				t.Errorf("user JWT %q, %v", got, err)
			}
		}},
		{"nkey seed", ConnectOptions{NKeySeedFile: seedFile}, false, func(t *testing.T, o nats.Options) {
			if o.Nkey != pub || o.SignatureCB == nil {
				t.Errorf("nkey %q, want %q", o.Nkey, pub)
			}
		}},
		{"missing nkey seed", ConnectOptions{NKeySeedFile: filepath.Join(dir, "none")}, true, nil},
		{"tls ca and client certificate", ConnectOptions{TLSCAFile: cert, TLSCertFile: cert, TLSKeyFile: key}, false, func(t *testing.T, o nats.Options) {
			if !o.Secure || o.RootCAsCB == nil || o.TLSCertCB == nil {
				t.Errorf("secure %v, CA %v, client cert %v", o.Secure, o.RootCAsCB != nil, o.TLSCertCB != nil)
			}
			c, err := o.TLSCertCB()
			if err != nil || c.Leaf == nil || c.Leaf.Subject.CommonName != "refgc test" {
				t.Errorf("client certificate %v, %v", c.Leaf, err)
			}
		}},
		{"certificate without key", ConnectOptions{TLSCertFile: cert}, true, nil},
		{"unreadable CA", ConnectOptions{TLSCAFile: filepath.Join(dir, "none.pem")}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := applyOptions(t, tt.opts)
			if tt.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}
