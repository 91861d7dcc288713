package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/slipway/slipway/internal/atomicfile"
)

// The embedded default creates environments on first push and keeps their names in
// <data_dir>/environments.json, so that they persist across restarts.
const registryFile = "environments.json"

type registry struct {
	Environments []string `json:"environments"`
}

func loadRegistry(dataDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, registryFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read environments: %w", err)
	}
	var r registry
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read environments %s: %w", filepath.Join(dataDir, registryFile), err)
	}
	return r.Environments, nil
}

func saveRegistry(dataDir string, repos []string) error {
	sort.Strings(repos)
	b, err := json.MarshalIndent(registry{Environments: repos}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dataDir, registryFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save environments: %w", err)
	}
	return nil
}
