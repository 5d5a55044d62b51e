package config

// Mail makes a module go on after AUTH to check that the account may send:
// MAIL FROM, one RCPT TO per recipient, then DATA (or RSET when Data is false).
type Mail struct {
	From    string   `yaml:"from"`
	To      []string `yaml:"to,omitempty"`
	Cc      []string `yaml:"cc,omitempty"`
	Bcc     []string `yaml:"bcc,omitempty"`
	Data    bool     `yaml:"data"`
	Message Message  `yaml:"message,omitempty"`
}

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
