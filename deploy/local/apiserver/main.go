// rtc-apiserver is a small but real Kubernetes API server for the local stack.
//
// No kube-apiserver binary can be installed on the machines this project runs
// on, so this program assembles one from the same libraries kube-apiserver is
// made of (k8s.io/apiserver's generic server and registry, etcd3 storage, the
// k8s.io/api types). Everything a client sees on the wire is the real
// implementation: discovery, resourceVersion compare-and-swap (409), 422
// validation errors, every patch type including server-side apply, label and
// field selectors, watches with bookmarks, graceful pod deletion. What it lacks
// is everything kube-controller-manager, the scheduler and the kubelets do;
// the local stack's pod runner plays those parts.
//
// The served resources are listed in resources.go; scheme.go explains how the
// external k8s.io/api types double as the server's internal types.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/compatibility"
	baseversion "k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"rtc-apiserver/openapi"
)

func main() {
	var (
		bindAddress = flag.String("bind-address", "127.0.0.1", "address to serve HTTPS on (loopback only by design)")
		port        = flag.Int("secure-port", 16443, "port to serve HTTPS on")
		etcdServers = flag.String("etcd-servers", "http://127.0.0.1:12379", "comma-separated etcd client URLs")
		etcdPrefix  = flag.String("etcd-prefix", "/registry", "key prefix of every object in etcd")
		certDir     = flag.String("cert-dir", "", "directory holding ca.crt, tls.crt and tls.key; created on first start (required)")
		tokenFile   = flag.String("token-file", "", "static bearer tokens, kube-apiserver's CSV format: token,user,uid,\"group1,group2\" (required)")
	)
	flag.Func("feature-gates", "key=value pairs of Kubernetes feature gates, comma-separated (e.g. WatchList=false)",
		utilfeature.DefaultMutableFeatureGate.Set)
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	if *certDir == "" || *tokenFile == "" {
		fmt.Fprintln(os.Stderr, "rtc-apiserver: --cert-dir and --token-file are required")
		os.Exit(2)
	}
	if err := run(*bindAddress, *port, strings.Split(*etcdServers, ","), *etcdPrefix, *certDir, *tokenFile); err != nil {
		klog.ErrorS(err, "rtc-apiserver failed")
		os.Exit(1)
	}
}

func run(bindAddress string, port int, etcdServers []string, etcdPrefix, certDir, tokenFile string) error {
	certFile, keyFile, err := ensureCerts(certDir)
	if err != nil {
		return err
	}

	cfg := genericapiserver.NewConfig(Codecs)
	// /version and the emulation version of the feature gates. The git
	// version itself is stamped in by build.sh (-ldflags -X).
	cfg.EffectiveVersion = compatibility.NewEffectiveVersionFromString(baseversion.DefaultKubeBinaryVersion, "", "")

	// HTTPS on loopback with our own CA; "WithLoopback" also gives the server
	// the privileged in-process client that post-start hooks use.
	serving := genericoptions.NewSecureServingOptions()
	serving.BindAddress = net.ParseIP(bindAddress)
	serving.BindPort = port
	serving.ServerCert.CertKey.CertFile = certFile
	serving.ServerCert.CertKey.KeyFile = keyFile
	if err := serving.WithLoopback().ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return fmt.Errorf("secure serving: %w", err)
	}

	authn, err := newAuthenticator(tokenFile)
	if err != nil {
		return err
	}
	cfg.Authentication.Authenticator = authn
	cfg.Authorization.Authorizer = authorizer{}
	// NamespaceLifecycle's most useful part: no objects in a missing
	// namespace. It needs the namespace store, which exists only after the
	// server is built; requests are served later still.
	nsCheck := &namespaceExists{}
	cfg.AdmissionControl = nsCheck

	// etcd3 storage, JSON encoded, with the watch cache in front of it as in
	// kube-apiserver. Every resource is stored in its one served version.
	storageConfig := storagebackend.NewDefaultConfig(etcdPrefix, storageCodec())
	storageConfig.Transport.ServerList = etcdServers
	storageConfig.EncodeVersioner = schema.GroupVersions(servedGroupVersions())
	etcdOptions := genericoptions.NewEtcdOptions(storageConfig)
	// There is no garbage collector: without this, a delete with
	// propagationPolicy=Foreground would leave a finalizer nobody removes.
	etcdOptions.EnableGarbageCollection = false
	if err := etcdOptions.ApplyTo(cfg); err != nil {
		return fmt.Errorf("etcd storage: %w", err)
	}

	// OpenAPI v2/v3 from definitions that build.sh generates with openapi-gen
	// for the served API packages. Server-side apply needs them: its field
	// manager reads list and map semantics from these schemas. The namer uses
	// a scheme without the internal registrations so the published
	// x-kubernetes-group-version-kind lists only real versions.
	namer := openapinamer.NewDefinitionNamer(externalScheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title = "rtc-apiserver"
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title = "rtc-apiserver"

	server, err := cfg.Complete(nil).New("rtc-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return fmt.Errorf("building the server: %w", err)
	}

	reg, err := installAPIs(server, cfg.RESTOptionsGetter)
	if err != nil {
		return err
	}
	nsCheck.namespaces = reg.namespaces

	// kube-apiserver's system namespaces exist from the first start on.
	server.AddPostStartHookOrDie("rtc-system-namespaces", func(hookCtx genericapiserver.PostStartHookContext) error {
		return reg.ensureNamespaces(hookCtx, "default", "kube-system", "kube-public", "kube-node-lease")
	})

	klog.InfoS("rtc-apiserver serving", "address", net.JoinHostPort(bindAddress, fmt.Sprint(port)), "etcd", etcdServers)
	ctx := genericapiserver.SetupSignalContext()
	return server.PrepareRun().RunWithContext(ctx)
}
