package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
)

func newPurge() *cobra.Command {
	var addr string
	var dry bool
	cmd := &cobra.Command{
		Use:   "purge REPO",
		Short: "Remove a whole repository online: its tags now (into the time machine), its revisions, layer links and unshared data as garbage",
		Long: `purge publishes a repository.deleted event. Collector passes then remove the
repository's tags (restorable for the repository's time-machine window), and,
with the usual grace, soft delete and retention, its revisions, layer links
and the blob data no other repository links. --dry-run prints what the
repository holds without changing anything.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := events.ValidateRepo(args[0]); err != nil {
				return err
			}
			q := url.Values{"repo": {args[0]}}
			if dry {
				q.Set("dry_run", "true")
			}
			var plan daemon.PurgePlan
			if err := fetch(cmd.Context(), http.MethodPost, addr, daemon.PurgePath+"?"+q.Encode(), &plan); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), plan)
		},
	}
	addrFlag(cmd, &addr)
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only print what the repository holds")
	return cmd
}

// restoreQuery is the query of POST /v1/restore for REPO@DIGEST (a
// revision from the trash) or REPO:TAG (a tag from the time machine).
func restoreQuery(arg string) (url.Values, error) {
	if repo, dg, ok := strings.Cut(arg, "@"); ok {
		if repo == "" || dg == "" {
			return nil, fmt.Errorf("want REPO@DIGEST or REPO:TAG, got %q", arg)
		}
		return url.Values{"repo": {repo}, "digest": {dg}}, nil
	}
	ref, err := events.ParseRef(arg)
	if err != nil || ref.Kind != events.NodeTag {
		return nil, fmt.Errorf("want REPO@DIGEST or REPO:TAG, got %q", arg)
	}
	return url.Values{"repo": {ref.Repo}, "tag": {ref.Name}}, nil
}

// dumpAt asks the daemon for the graph as it was at a point of the log
// (a sequence or an RFC 3339 time): only the daemon can replay its log.
func dumpAt(cmd *cobra.Command, addr, at string) error {
	body, err := call(cmd.Context(), http.MethodGet, addr, daemon.DumpPath+"?"+url.Values{"at": {at}}.Encode())
	if err != nil {
		return fmt.Errorf("dump --at needs the running daemon: %w", err)
	}
	defer body.Close()
	_, err = io.Copy(cmd.OutOrStdout(), body)
	return err
}
