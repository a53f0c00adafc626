package embedraft

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"

	"go.etcd.io/etcd/raft/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// raftLogger adapts a *slog.Logger to raft's Logger interface.
//
// raft calls Fatal and Panic only on broken internal invariants and expects
// them not to return; after logging we hand them to raft's default logger,
// which panics, rather than continue on a corrupted state machine.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...interface{})                 { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(format string, v ...interface{}) { r.l.Debug(fmt.Sprintf(format, v...)) }
func (r raftLogger) Info(v ...interface{})                  { r.l.Info(fmt.Sprint(v...)) }
func (r raftLogger) Infof(format string, v ...interface{})  { r.l.Info(fmt.Sprintf(format, v...)) }
func (r raftLogger) Warning(v ...interface{})               { r.l.Warn(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(format string, v ...interface{}) {
	r.l.Warn(fmt.Sprintf(format, v...))
}
func (r raftLogger) Error(v ...interface{})                 { r.l.Error(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(format string, v ...interface{}) { r.l.Error(fmt.Sprintf(format, v...)) }
func (r raftLogger) Fatal(v ...interface{}) {
	r.l.Error("raft fatal: " + fmt.Sprint(v...))
	raftInvariantLogger.Fatal(v...)
}
func (r raftLogger) Fatalf(format string, v ...interface{}) {
	r.l.Error("raft fatal: " + fmt.Sprintf(format, v...))
	raftInvariantLogger.Fatalf(format, v...)
}
func (r raftLogger) Panic(v ...interface{}) {
	r.l.Error("raft panic: " + fmt.Sprint(v...))
	raftInvariantLogger.Panic(v...)
}
func (r raftLogger) Panicf(format string, v ...interface{}) {
	r.l.Error("raft panic: " + fmt.Sprintf(format, v...))
	raftInvariantLogger.Panicf(format, v...)
}

// raftInvariantLogger is raft's own default logger, whose Panic panics.
var raftInvariantLogger raft.Logger = &raft.DefaultLogger{Logger: log.New(os.Stderr, "raft ", log.LstdFlags)}

// newZapLogger bridges etcd's zap logging (rafthttp, wal, snap) into slog.
func newZapLogger(l *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{l: l})
}

type slogCore struct {
	l      *slog.Logger
	fields []zapcore.Field
}

func (c *slogCore) Enabled(lvl zapcore.Level) bool {
	return c.l.Enabled(context.Background(), zapToSlog(lvl))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{l: c.l, fields: append(append([]zapcore.Field{}, c.fields...), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields)+2)
	if e.LoggerName != "" {
		attrs = append(attrs, "logger", e.LoggerName)
	}
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	c.l.Log(context.Background(), zapToSlog(e.Level), e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

func zapToSlog(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}
