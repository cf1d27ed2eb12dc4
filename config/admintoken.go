package config

import (
	"fmt"
	"os"
	"strings"
)

// EnvAdminToken holds the admin token itself (a secret belongs neither in
// argv nor in a config file others may read); admin_token_file names a
// file holding it instead.
const EnvAdminToken = "STICKYD_ADMIN_TOKEN"

// AdminToken returns the admin API's token ("" for none): env, the value
// of STICKYD_ADMIN_TOKEN, or the content of admin_token_file. Both set, or
// a file that cannot be read or is empty, is an error. Serve and
// check-config both call it, so they refuse the same setups.
func (c *Config) AdminToken(env string) (string, error) {
	switch {
	case env != "" && c.AdminTokenFile != "":
		return "", fmt.Errorf("admin_token_file and %s are both set: use one", EnvAdminToken)
	case env != "":
		return strings.TrimSpace(env), nil
	case c.AdminTokenFile == "":
		return "", nil
	}
	b, err := os.ReadFile(c.AdminTokenFile)
	if err != nil {
		return "", fmt.Errorf("admin_token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("admin_token_file %s is empty", c.AdminTokenFile)
	}
	return token, nil
}
