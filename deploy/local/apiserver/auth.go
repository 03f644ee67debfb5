package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/apiserver/pkg/authentication/token/tokenfile"
	"k8s.io/apiserver/pkg/authentication/user"
	authz "k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
)

// ---- authentication ----

// newAuthenticator accepts the static bearer tokens of tokenFile, like
// kube-apiserver's --token-auth-file. A request without credentials is
// anonymous; one with a wrong token is refused with 401, not downgraded.
func newAuthenticator(tokenFile string) (authenticator.Request, error) {
	tokens, err := tokenfile.NewCSV(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading --token-file: %w", err)
	}
	return union.NewFailOnError(
		union.New(bearertoken.New(tokens)),
		anonymous.NewAuthenticator(nil),
	), nil
}

// ---- authorization ----

// authorizer lets every authenticated user do everything (the token is the
// only credential; there is no RBAC enforcement: RBAC objects are stored and
// served but not evaluated). Anonymous users may only read the health and
// version endpoints, as with kube-apiserver's default RBAC.
type authorizer struct{}

var anonymousPaths = []string{"/healthz", "/livez", "/readyz", "/version"}

func (authorizer) Authorize(ctx context.Context, a authz.Attributes) (authz.Decision, string, error) {
	u := a.GetUser()
	if u == nil {
		return authz.DecisionDeny, "no user", nil
	}
	for _, g := range u.GetGroups() {
		if g == user.AllAuthenticated || g == user.SystemPrivilegedGroup {
			return authz.DecisionAllow, "", nil
		}
	}
	if !a.IsResourceRequest() && a.GetVerb() == "get" {
		for _, p := range anonymousPaths {
			if a.GetPath() == p || strings.HasPrefix(a.GetPath(), p+"/") {
				return authz.DecisionAllow, "", nil
			}
		}
	}
	return authz.DecisionNoOpinion, "anonymous access is limited to health and version endpoints; send the bearer token", nil
}

func (authorizer) RulesFor(ctx context.Context, u user.Info, namespace string) ([]authz.ResourceRuleInfo, []authz.NonResourceRuleInfo, bool, error) {
	return nil, nil, true, errors.New("rule listing is not supported")
}

// ---- admission ----

// namespaceExists is the part of the NamespaceLifecycle admission plugin
// clients notice: an object cannot be created in a namespace that does not
// exist (404, as from kube-apiserver).
type namespaceExists struct {
	namespaces *genericregistry.Store
}

var _ admission.ValidationInterface = &namespaceExists{}

func (n *namespaceExists) Handles(op admission.Operation) bool { return op == admission.Create }

func (n *namespaceExists) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a.GetNamespace() == "" || a.GetSubresource() != "" || n.namespaces == nil {
		return nil
	}
	if a.GetKind().GroupKind() == corev1.SchemeGroupVersion.WithKind("Namespace").GroupKind() {
		return nil
	}
	_, err := n.namespaces.Get(genericapirequest.WithNamespace(ctx, ""), a.GetNamespace(), &metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return apierrors.NewNotFound(corev1.Resource("namespaces"), a.GetNamespace())
	}
	return err
}

// ---- serving certificate ----

// ensureCerts creates, once, a CA and a serving certificate for 127.0.0.1,
// ::1 and localhost in dir. Clients trust ca.crt (the kubeconfig embeds it).
// Kept across restarts so a kubeconfig stays valid.
func ensureCerts(dir string) (certFile, keyFile string, err error) {
	caFile := filepath.Join(dir, "ca.crt")
	certFile = filepath.Join(dir, "tls.crt")
	keyFile = filepath.Join(dir, "tls.key")
	if fileExists(caFile) && fileExists(certFile) && fileExists(keyFile) {
		return certFile, keyFile, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "rtc-apiserver-ca"},
		NotBefore:             now,
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "rtc-apiserver"},
		NotBefore:    now,
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return "", "", err
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return "", "", err
	}
	// ca.crt last: its presence marks a complete set.
	if err := writePEM(caFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
