package datagen

// words is the vocabulary of every generated text, roughly in order of
// decreasing frequency: text.go draws from it with a Zipf-like law over the
// position, so that "the" is common and "idempotency" is rare, which gives
// generated prose the compressibility of real English (about 3-4x with zstd)
// instead of the 1.5x of uniformly random words or the 100x of a repeated
// sentence. The list is fixed: changing it changes every generated database.
var words = [...]string{
	// Function words.
	"the", "to", "and", "a", "of", "is", "in", "it", "that", "for",
	"this", "on", "we", "with", "be", "not", "I", "are", "as", "but",
	"have", "can", "if", "when", "from", "at", "was", "or", "an", "so",
	"should", "will", "by", "all", "there", "which", "would", "you", "do", "they",
	"after", "now", "only", "also", "then", "still", "our", "its", "more", "no",
	"just", "some", "been", "has", "one", "because", "into", "out", "up", "what",
	"does", "any", "same", "other", "than", "before", "about", "them", "these", "where",
	"again", "once", "each", "both", "while", "until", "without", "between", "over", "under",
	"maybe", "probably", "already", "never", "always", "sometimes", "instead", "though", "however", "since",
	"here", "very", "much", "many", "most", "few", "less", "even", "well", "too",
	"how", "why", "who", "whether", "might", "could", "must", "need", "may", "did",
	"get", "got", "see", "seems", "looks", "think", "know", "make", "made", "take",
	// Everyday verbs.
	"fix", "fixed", "fails", "failed", "works", "working", "broken", "check", "checked", "add",
	"added", "remove", "removed", "update", "updated", "change", "changed", "move", "moved", "use",
	"using", "used", "run", "running", "ran", "try", "tried", "test", "tested", "deploy",
	"deployed", "merge", "merged", "review", "reviewed", "open", "opened", "close", "closed", "reopen",
	"create", "created", "delete", "deleted", "load", "loaded", "save", "saved", "send", "sent",
	"show", "shows", "shown", "return", "returns", "returned", "call", "calls", "called", "start",
	"started", "stop", "stopped", "wait", "waiting", "block", "blocked", "retry", "retries", "handle",
	"handled", "expect", "expected", "happen", "happens", "happened", "reproduce", "reproduced", "investigate", "confirm",
	"confirmed", "agree", "suggest", "propose", "prefer", "keep", "kept", "drop", "dropped", "skip",
	"skipped", "ignore", "ignored", "allow", "allowed", "prevent", "support", "supported", "require", "required",
	"build", "builds", "release", "released", "rollback", "rolled", "migrate", "migrated", "upgrade", "upgraded",
	"configure", "configured", "set", "reset", "restart", "restarted", "log", "logged", "trace", "measure",
	// Everyday nouns and adjectives.
	"issue", "problem", "bug", "error", "errors", "user", "users", "customer", "customers", "team",
	"page", "button", "form", "field", "value", "values", "list", "table", "row", "rows",
	"time", "times", "day", "days", "week", "weeks", "today", "yesterday", "tomorrow", "morning",
	"case", "cases", "way", "thing", "things", "part", "point", "idea", "question", "answer",
	"reason", "result", "results", "step", "steps", "side", "end", "start", "version", "versions",
	"new", "old", "first", "last", "next", "previous", "good", "bad", "better", "worse",
	"small", "large", "big", "long", "short", "high", "low", "fast", "slow", "slower",
	"same", "different", "simple", "complex", "easy", "hard", "clear", "unclear", "correct", "wrong",
	"right", "left", "empty", "full", "missing", "extra", "wrong", "stale", "fresh", "current",
	"possible", "impossible", "likely", "unlikely", "important", "urgent", "minor", "major", "critical", "blocking",
	"people", "someone", "everyone", "nobody", "anyone", "manager", "support", "sales", "design", "product",
	"note", "comment", "comments", "screenshot", "attachment", "link", "email", "message", "report", "reports",
	"meeting", "call", "sync", "plan", "roadmap", "sprint", "backlog", "estimate", "deadline", "priority",
	"account", "accounts", "invoice", "invoices", "payment", "payments", "order", "orders", "price", "plan",
	"settings", "profile", "password", "permission", "permissions", "role", "roles", "group", "groups", "admin",
	"search", "filter", "sort", "export", "import", "upload", "download", "file", "files", "folder",
	"mobile", "desktop", "browser", "app", "web", "android", "iOS", "Safari", "Chrome", "Firefox",
	// Engineering vocabulary.
	"server", "client", "service", "services", "request", "requests", "response", "responses", "endpoint", "API",
	"database", "query", "queries", "index", "schema", "migration", "transaction", "lock", "deadlock", "timeout",
	"cache", "queue", "worker", "workers", "job", "jobs", "cron", "batch", "stream", "event",
	"events", "handler", "middleware", "config", "flag", "feature", "toggle", "rollout", "canary", "cluster",
	"node", "pod", "container", "image", "registry", "pipeline", "CI", "staging", "production", "environment",
	"memory", "CPU", "disk", "network", "latency", "throughput", "load", "spike", "leak", "crash",
	"panic", "exception", "stack", "trace", "log", "logs", "metric", "metrics", "dashboard", "alert",
	"alerts", "incident", "outage", "postmortem", "regression", "flaky", "race", "condition", "retry", "backoff",
	"token", "session", "cookie", "header", "payload", "JSON", "XML", "CSV", "UTF-8", "encoding",
	"null", "undefined", "string", "integer", "boolean", "array", "object", "function", "method", "class",
	"module", "package", "dependency", "library", "framework", "plugin", "script", "command", "flag", "option",
	"branch", "commit", "patch", "diff", "PR", "hotfix", "tag", "revert", "conflict", "rebase",
	"unit", "integration", "e2e", "coverage", "fixture", "mock", "snapshot", "benchmark", "profile", "profiling",
	"webhook", "callback", "integration", "sync", "replication", "backup", "restore", "shard", "partition", "tenant",
	"idempotency", "pagination", "serialization", "validation", "authorization", "authentication", "encryption", "compression", "concurrency", "consistency",
	"upstream", "downstream", "frontend", "backend", "gateway", "proxy", "load-balancer", "DNS", "TLS", "certificate",
	"Postgres", "Redis", "Kafka", "S3", "Kubernetes", "Terraform", "Docker", "Sentry", "Grafana", "Datadog",
	"p99", "p95", "500", "502", "503", "404", "403", "401", "429", "OOM",
	// Filler that makes sentences sound like people.
	"thanks", "please", "sorry", "agreed", "sure", "okay", "yes", "nope", "FYI", "ASAP",
	"LGTM", "nit", "TODO", "WIP", "blocker", "follow-up", "workaround", "root", "cause", "impact",
	"scope", "context", "details", "summary", "background", "proposal", "decision", "tradeoff", "risk", "risks",
	"quickly", "carefully", "properly", "correctly", "eventually", "currently", "recently", "temporarily", "manually", "automatically",
	"slightly", "really", "actually", "basically", "definitely", "exactly", "mostly", "partly", "randomly", "consistently",
}

// firstNames and lastNames make people's names and e-mail addresses.
var firstNames = [...]string{
	"Ada", "Alan", "Alice", "Amara", "Ana", "Andrei", "Anil", "Anna", "Arjun", "Ayesha",
	"Ben", "Bianca", "Bo", "Carla", "Carlos", "Chen", "Chloe", "Dana", "Daniel", "David",
	"Diego", "Dmitri", "Elena", "Emma", "Eric", "Fatima", "Felix", "Fiona", "Grace", "Hana",
	"Hassan", "Ines", "Ivan", "Jack", "James", "Jana", "Javier", "Jin", "Joao", "Jonas",
	"Julia", "Kai", "Kenji", "Kofi", "Lara", "Lea", "Leo", "Liam", "Lina", "Lucas",
	"Maria", "Marco", "Maya", "Mei", "Mia", "Mohamed", "Nadia", "Nia", "Noah", "Nora",
	"Olga", "Omar", "Pablo", "Priya", "Rafael", "Ravi", "Rosa", "Sam", "Sara", "Sofia",
	"Tariq", "Tom", "Uma", "Victor", "Wei", "Yara", "Yuki", "Zane", "Zoe", "Zara",
}

var lastNames = [...]string{
	"Adams", "Ahmed", "Alvarez", "Andersen", "Baker", "Bauer", "Becker", "Brown", "Chen", "Costa",
	"Dubois", "Ekstrom", "Fischer", "Garcia", "Gonzalez", "Gupta", "Hansen", "Hoffmann", "Ibrahim", "Ivanova",
	"Jensen", "Johnson", "Kim", "Kowalski", "Kumar", "Larsen", "Lee", "Li", "Lopez", "Martin",
	"Meyer", "Moreau", "Muller", "Nakamura", "Nguyen", "Novak", "Okafor", "Olsen", "Patel", "Petrov",
	"Rossi", "Santos", "Schmidt", "Schneider", "Silva", "Singh", "Smith", "Suzuki", "Tanaka", "Taylor",
	"Wagner", "Walker", "Wang", "Weber", "Williams", "Wilson", "Wright", "Yamamoto", "Zhang", "Zimmermann",
}

// companyWords make tenant names such as "Blue Harbor Logistics".
var companyWords = [...]string{
	"Acme", "Apex", "Atlas", "Aurora", "Beacon", "Blue", "Bright", "Cedar", "Cobalt", "Comet",
	"Crescent", "Delta", "Echo", "Ember", "Evergreen", "Falcon", "Harbor", "Horizon", "Iron", "Juniper",
	"Keystone", "Lumen", "Maple", "Meridian", "Nimbus", "North", "Nova", "Oak", "Orbit", "Pine",
	"Pioneer", "Polar", "Quartz", "Redwood", "River", "Sable", "Silver", "Summit", "Terra", "Vertex",
}

var companyKinds = [...]string{
	"Analytics", "Bank", "Cloud", "Consulting", "Dynamics", "Energy", "Foods", "Games", "Health", "Holdings",
	"Industries", "Insurance", "Labs", "Logistics", "Media", "Networks", "Partners", "Retail", "Robotics", "Software",
	"Studios", "Systems", "Technologies", "Telecom", "Travel", "Ventures", "Works", "GmbH", "Inc", "Ltd",
}

// labelNames are the values of issues.labels.
var labelNames = [...]string{
	"bug", "feature", "enhancement", "docs", "ux", "backend", "frontend", "api", "mobile", "performance",
	"security", "customer-reported", "regression", "tech-debt", "good-first-issue", "needs-triage", "blocked", "p0", "p1", "wontfix",
}

// countries is the content of the countries reference table.
var countries = [...][2]string{
	{"AR", "Argentina"}, {"AT", "Austria"}, {"AU", "Australia"}, {"BE", "Belgium"}, {"BR", "Brazil"},
	{"CA", "Canada"}, {"CH", "Switzerland"}, {"CL", "Chile"}, {"CN", "China"}, {"CO", "Colombia"},
	{"CZ", "Czechia"}, {"DE", "Germany"}, {"DK", "Denmark"}, {"EG", "Egypt"}, {"ES", "Spain"},
	{"FI", "Finland"}, {"FR", "France"}, {"GB", "United Kingdom"}, {"GH", "Ghana"}, {"GR", "Greece"},
	{"HU", "Hungary"}, {"ID", "Indonesia"}, {"IE", "Ireland"}, {"IL", "Israel"}, {"IN", "India"},
	{"IT", "Italy"}, {"JP", "Japan"}, {"KE", "Kenya"}, {"KR", "South Korea"}, {"MA", "Morocco"},
	{"MX", "Mexico"}, {"MY", "Malaysia"}, {"NG", "Nigeria"}, {"NL", "Netherlands"}, {"NO", "Norway"},
	{"NZ", "New Zealand"}, {"PE", "Peru"}, {"PH", "Philippines"}, {"PK", "Pakistan"}, {"PL", "Poland"},
	{"PT", "Portugal"}, {"RO", "Romania"}, {"SE", "Sweden"}, {"SG", "Singapore"}, {"TH", "Thailand"},
	{"TR", "Türkiye"}, {"UA", "Ukraine"}, {"US", "United States"}, {"VN", "Viet Nam"}, {"ZA", "South Africa"},
}

// plans is the content of the plans reference table: code, name, monthly
// price in cents.
var plans = [...]struct {
	code, name string
	cents      int64
}{
	{"free", "Free", 0},
	{"starter", "Starter", 900},
	{"team", "Team", 4900},
	{"business", "Business", 24900},
	{"enterprise", "Enterprise", 199900},
}

// oddTenantIDs are tenant IDs that break naive code: quoting, path
// traversal, COPY text escapes, LIKE wildcards, non-ASCII, case-only
// differences, and keys that are prefixes of other keys. They replace some
// regular IDs when Options.OddIDs is set. None contains a newline, so a
// tenants file with one ID per line can still name every tenant.
var oddTenantIDs = [...]string{
	"o'brien & co",
	"a/../b",
	"Ünïcödé-GmbH",
	"tab\there",
	`back\slash`,
	`\N`,
	"100%_off",
	"Robert'); DROP TABLE tenants;--",
	"x/y",
	"x/y/z",
	"..",
	"🦀 crab",
	" leading and trailing ",
	"T0002", // differs from t0002 only by case
}

// phrases are the word groups that people repeat, which is what makes real
// text compress well (an LZ compressor finds them again); text.go mixes them
// with single words, with a Zipf-like law over their position too.
var phrases = [...]string{
	"it looks like", "I think", "as far as I can tell", "on our side", "in production",
	"on staging", "for some reason", "at the moment", "as expected", "not sure why",
	"thanks for the quick fix", "can you take a look", "let me know if", "I will check",
	"steps to reproduce", "expected behaviour", "actual behaviour", "the same issue",
	"this is a duplicate of", "see the attached screenshot", "after the last release",
	"since yesterday", "for all users", "for some users", "only on mobile", "in the admin panel",
	"when I click the button", "the page does not load", "the request times out", "we get a 500 error",
	"the logs show", "the root cause is", "the fix is deployed", "the fix is in review",
	"we should add a test", "we need more details", "can you share the logs", "I can reproduce it",
	"I cannot reproduce it", "it works for me", "on the latest version", "in the next sprint",
	"by the end of the week", "before the release", "after the migration", "during the deploy",
	"the customer reported", "the customer is waiting", "high priority for", "low priority for now",
	"this blocks", "this is blocked by", "depends on", "related to", "follow-up for",
	"the database is slow", "the query is slow", "the job failed", "the import failed", "the export is empty",
	"the email was not sent", "the webhook was not called", "the cache is stale", "the token expired",
	"out of memory", "connection refused", "permission denied", "rate limit exceeded", "null pointer",
	"in the background", "on every request", "once per day", "every few minutes", "from time to time",
	"more than once", "at least once", "a few times", "most of the time", "all the time",
	"I agree with", "good catch", "makes sense", "sounds good", "not a big deal",
	"we discussed this", "as discussed in the meeting", "per the call", "moving this to", "closing this as",
	"reopening because", "marking as done", "assigning to", "adding a label", "updated the description",
	"the new version", "the old version", "the previous behaviour", "the current behaviour", "the default value",
	"in the config", "behind a feature flag", "with the flag on", "with the flag off", "in the settings page",
	"in the API response", "in the request body", "in the query string", "in the header", "in the CSV export",
}
