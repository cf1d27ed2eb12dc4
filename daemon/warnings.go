package daemon

import (
	"os"

	"github.com/stickyd/stickyd/config"
	"go.uber.org/zap"
)

// warnRiskySetup logs, once at start, the settings that let clients choose
// the address they are routed and announced by, with the fix.
func warnRiskySetup(cfg *config.Config, log *zap.Logger) {
	for _, p := range cfg.Trusted() {
		if p.Bits() == 0 {
			log.Warn("accept_proxy trusts every address: any client can send a PROXY header (or, in header mode, an address header) and choose its address",
				zap.String("accept_proxy", p.String()),
				zap.String("fix", "list only your load balancers' addresses or subnets"))
		}
	}
	if cfg.ClientIPHeader != "" && len(cfg.AcceptProxy) == 0 {
		log.Warn("client_ip_header without accept_proxy: every peer is believed as the nearest proxy, so a client that reaches stickyd directly chooses its own address",
			zap.String("client_ip_header", cfg.ClientIPHeader),
			zap.String("fix", "set --accept-proxy to your proxies' addresses, or make sure clients can only reach stickyd through them"))
	}
}

// warnUnknownEnv logs, once at start, each STICKYD_ variable that stickyd
// does not read: a misspelt environment twin would otherwise be ignored
// without a word.
func warnUnknownEnv(log *zap.Logger) {
	for _, u := range config.UnknownEnvs(os.Environ()) {
		fix := "remove it, or name a setting's twin (stickyd --help lists them: $STICKYD_SEND_PROXY for --send-proxy)"
		if u.Meant != "" {
			fix = "did you mean " + u.Meant + "?"
		}
		log.Warn("unknown STICKYD_ environment variable: ignored", zap.String("variable", u.Name), zap.String("fix", fix))
	}
}
