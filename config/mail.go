package config

import (
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
)

// Mail makes a module go on after AUTH to check that the account may send:
// MAIL FROM, one RCPT TO per recipient, then DATA (or RSET when Data is false).
type Mail struct {
	From    string   `yaml:"from"`
	To      []string `yaml:"to,omitempty"`
	Cc      []string `yaml:"cc,omitempty"`
	Bcc     []string `yaml:"bcc,omitempty"`
	Data    bool     `yaml:"data"`
	Message Message  `yaml:"message,omitempty"`
	// Delivery, when set, watches the mailbox the canary is delivered to
	// and reports whether and when it arrived. Only with Data.
	Delivery *Delivery `yaml:"delivery,omitempty"`
}

// Delivery confirms that canaries reach a mailbox, read over IMAP. The
// scrape never waits for it: a watcher per mailbox finds each canary by its
// probe id header.
type Delivery struct {
	IMAP IMAP `yaml:"imap"`
	// LateAfter is how long a canary may be pending before it counts as
	// late; LostAfter, longer, when it counts as lost and is forgotten.
	LateAfter model.Duration `yaml:"late_after"`
	LostAfter model.Duration `yaml:"lost_after"`
}

// IMAP is the mailbox that receives the canary and how to log in to it. The
// credentials are those of an auth block: username with password,
// password_file, token_file or oauth2, and a mechanism (auto, LOGIN, PLAIN,
// OAUTHBEARER or XOAUTH2).
type IMAP struct {
	// Address is host:port.
	Address   string               `yaml:"address"`
	TLS       TLSMode              `yaml:"tls"`
	TLSConfig promconfig.TLSConfig `yaml:"tls_config,omitempty"`
	// Auth is a named field, not embedded: an embedded Auth would lend its
	// UnmarshalYAML to the whole block.
	Auth Auth `yaml:",inline"`
	// Mailbox is where the canary is delivered; the account's Junk folder
	// is searched too.
	Mailbox string `yaml:"mailbox"`
}

// IMAPMechanisms are the mechanisms an IMAP login can use: LOGIN is the
// IMAP LOGIN command, the others AUTHENTICATE.
var IMAPMechanisms = []string{MechanismLogin, MechanismPlain, MechanismOAUTHBEARER, MechanismXOAUTH2}

// Message is the canary message sent with DATA.
type Message struct {
	FromName    string            `yaml:"from_name,omitempty"`
	ReplyTo     string            `yaml:"reply_to,omitempty"`
	Subject     string            `yaml:"subject,omitempty"`
	Priority    int               `yaml:"priority,omitempty"`
	Headers     map[string]string `yaml:"headers,omitempty"`
	Body        string            `yaml:"body,omitempty"`
	HTMLBody    string            `yaml:"html_body,omitempty"`
	Attachments []Attachment      `yaml:"attachments,omitempty"`
}

// Attachment is a file attached to the canary message, read at each probe.
type Attachment struct {
	Path        string `yaml:"path"`
	ContentType string `yaml:"content_type,omitempty"`
	// Filename is the name shown to the recipient; default: the base name of Path.
	Filename string `yaml:"filename,omitempty"`
}

// Defaults for the canary.
var (
	DefaultMail = Mail{
		Data:    true,
		Message: DefaultMessage,
	}
	DefaultDelivery = Delivery{
		IMAP:      DefaultIMAP,
		LateAfter: model.Duration(2 * time.Minute),
		LostAfter: model.Duration(30 * time.Minute),
	}
	DefaultIMAP = IMAP{
		TLS:     TLSImplicit,
		Auth:    DefaultAuth,
		Mailbox: "INBOX",
	}
	DefaultMessage = Message{
		Subject: "smtp_exporter canary",
		Body:    "This message was sent by smtp_exporter to check that mail can be submitted.\n",
	}
)

// UnmarshalYAML applies the defaults.
func (m *Mail) UnmarshalYAML(unmarshal func(any) error) error {
	*m = DefaultMail
	type plain Mail
	return unmarshal((*plain)(m))
}

// UnmarshalYAML applies the defaults.
func (d *Delivery) UnmarshalYAML(unmarshal func(any) error) error {
	*d = DefaultDelivery
	type plain Delivery
	return unmarshal((*plain)(d))
}

// UnmarshalYAML applies the defaults.
func (i *IMAP) UnmarshalYAML(unmarshal func(any) error) error {
	*i = DefaultIMAP
	type plain IMAP
	return unmarshal((*plain)(i))
}

// UnmarshalYAML applies the defaults.
func (m *Message) UnmarshalYAML(unmarshal func(any) error) error {
	*m = DefaultMessage
	type plain Message
	return unmarshal((*plain)(m))
}

// Recipients returns every envelope recipient in RCPT TO order: To, Cc, Bcc.
func (m *Mail) Recipients() []string {
	all := make([]string, 0, len(m.To)+len(m.Cc)+len(m.Bcc))
	all = append(all, m.To...)
	all = append(all, m.Cc...)
	return append(all, m.Bcc...)
}
