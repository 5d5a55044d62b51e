package collector

import (
	"errors"
	"fmt"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// notice is the sentence at the top of the log, the debug output and the
// result page of an answer that stands in for a probe: what happened, when
// the login last ran and when the next one may run.
func notice(ans Answer, e *Entry, module *config.Module, now time.Time) string {
	switch ans.Provenance {
	case Shared:
		if ans.Entry == nil {
			return "Timed out " + awaited(ans) + ": this request's deadline passed first."
		}
		return fmt.Sprintf("Shared: probe %s of the same module and address, started at %s by another request, answers this one too.",
			e.ProbeID, clock(e.Time))
	case Reused:
		return fmt.Sprintf("Reused: probe %s ran %s ago, at %s, and the module's min_interval (%s) has not passed; "+
			"no new session was opened. The next may run from %s.",
			e.ProbeID, ago(now.Sub(e.Time)), clock(e.Time), module.MinInterval, clock(ans.NextLogin))
	case Held:
		h := ans.Hold
		refused := fmt.Sprintf("probe %s (module %s, target %s) got %s at %s", h.ProbeID, h.Module, printable.String(h.Target), reply(h), clock(h.Since))
		if h.Deciding {
			return fmt.Sprintf("Login held: %s; that hold has passed and another request's login is finding out whether it still holds. "+
				"No login was made for this request.", refused)
		}
		return fmt.Sprintf("Login held: %s, and auth_failure_backoff holds every login of this account, whatever the module and target, "+
			"until %s (%s from now). No login was made for this request. Changing the password or the username ends the hold at once.",
			refused, clock(h.Until), ago(h.Until.Sub(now)))
	}
	return ""
}

// reply describes the reply that started a hold: "535 5.7.8 (auth_rejected)".
func reply(h *Hold) string {
	s := string(h.Reason)
	if h.Code != 0 {
		code := fmt.Sprint(h.Code)
		if h.Enhanced != "" {
			code += " " + h.Enhanced
		}
		s = code + " (" + s + ")"
	}
	return s
}

func clock(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

func ago(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

// heldEntry is the result of a request held by a refusal of another module
// or address of the same account: the module's phases, none run, and the
// failure that started the hold, in phase auth with its reply code.
func heldEntry(h *Hold, moduleName, target string, module *config.Module, timeout time.Duration) Entry {
	result := plannedResult(module)
	for i := range result.Phases {
		if p := &result.Phases[i]; p.Phase == prober.PhaseAuth {
			p.Ran, p.Code, p.Enhanced = true, h.Code, h.Enhanced
		}
	}
	result.Failure = &prober.Failure{Phase: prober.PhaseAuth, Reason: h.Reason, Err: errors.New("login held")}
	return Entry{Time: h.Since, Module: moduleName, Target: target, Timeout: timeout,
		FailurePhase: prober.PhaseAuth, FailureReason: h.Reason, Result: result}
}

// awaited says what a request whose deadline passed while it waited was
// waiting for.
func awaited(ans Answer) string {
	if ans.AwaitedLogin {
		return "waiting for another module's login of the same account"
	}
	return "waiting for a concurrent probe of the same module and address"
}

// abandonedEntry is the result of a request whose deadline passed while it
// waited for another request's probe.
func abandonedEntry(ans Answer, moduleName, target string, module *config.Module, timeout time.Duration, now time.Time) Entry {
	result := plannedResult(module)
	result.Duration = timeout
	result.Failure = &prober.Failure{Phase: prober.PhaseSetup, Reason: prober.ReasonTimeout,
		Err: errors.New("timed out " + awaited(ans))}
	return Entry{Time: now.Add(-timeout), Module: moduleName, Target: target, Timeout: timeout, Duration: timeout,
		FailurePhase: prober.PhaseSetup, FailureReason: prober.ReasonTimeout, Result: result}
}

// plannedResult is a failed result with the module's phases, none run.
func plannedResult(module *config.Module) *prober.Result {
	result := &prober.Result{SizeLimit: -1}
	for _, ph := range prober.PlannedPhases(module) {
		result.Phases = append(result.Phases, prober.PhaseResult{Phase: ph})
	}
	return result
}
