//! The expression language of task packs: `{{ … }}` templates, `when` and branch
//! conditions, and `map`/`loop` item lists.
//!
//! Written by hand (a lexer and a Pratt parser, about 500 lines) because no maintained
//! crate fits all of: `&&`/`||`/`!` (minijinja and Tera use `and`/`or`/`not`), step ids
//! with `-` in paths (`steps.scan-image.outputs.digest`; evalexpr would read a minus),
//! JSON values in and out rather than the crate's own value type, and static extraction
//! of every reference so an unknown one is a plan error with its JSON path before any
//! run. The language is deliberately small: no arithmetic, no assignment, no loops.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := cmp ("&&" cmp)*
//! cmp     := unary (("==" | "!=" | "<" | "<=" | ">" | ">=") unary)?
//! unary   := "!" unary | postfix
//! postfix := primary ("." name | "[" expr "]")*
//! primary := literal | name | name "(" (expr ("," expr)*)? ")" | "(" expr ")"
//! literal := 'text' | "text" | number | true | false | null
//! ```
//!
//! Names are letters, digits, `_` and `-`, not starting with a digit or `-`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value.
    Literal(Value),
    /// A root name: `inputs`, `steps`, or an item variable.
    Var(String),
    /// `base.name`.
    Field(Box<Expr>, String),
    /// `base[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `!operand`.
    Not(Box<Expr>),
    /// `left && right`.
    And(Box<Expr>, Box<Expr>),
    /// `left || right`.
    Or(Box<Expr>, Box<Expr>),
    /// A comparison.
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    /// `name(args…)`, one of [`FUNCTIONS`].
    Call(String, Vec<Expr>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The functions, with their number of arguments.
pub const FUNCTIONS: [(&str, usize); 9] = [
    ("len", 1),
    ("contains", 2),
    ("startsWith", 2),
    ("endsWith", 2),
    ("lower", 1),
    ("upper", 1),
    ("default", 2),
    ("join", 2),
    ("toJson", 1),
];

/// What an expression refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reference {
    /// `inputs.<name>`.
    Input {
        /// Input name.
        name: String,
    },
    /// `steps.<step>.outputs.<output>`.
    StepOutput {
        /// Step id.
        step: String,
        /// Output name.
        output: String,
    },
    /// An item variable (`item`, `index`, or the names a map or loop chose).
    Variable {
        /// Variable name.
        name: String,
    },
    /// Anything else: an error wherever it appears.
    Invalid {
        /// What was written.
        text: String,
        /// Why it is wrong.
        reason: String,
    },
}

/// A string with `{{ expr }}` parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// Why an expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError(pub String);

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a string can name an item variable.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a string holds a `{{`.
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

impl Template {
    /// Parse text with `{{ expr }}` parts.
    pub fn parse(text: &str) -> Result<Template, ExprError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| ExprError("`{{` without a closing `}}`".to_owned()))?;
            parts.push(Part::Expr(parse(&after[..close])?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The expressions of the template.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// Every reference of every expression.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        for e in self.expressions() {
            e.collect_references(&mut out);
        }
        out
    }

    /// The value: a template that is one `{{ expr }}` alone keeps the expression's JSON
    /// type; anything else is text, each value written as [`to_text`] does.
    pub fn render(&self, context: &Value) -> Result<Value, ExprError> {
        if let [Part::Expr(e)] = self.parts.as_slice() {
            return e.eval(context);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => out.push_str(&to_text(&e.eval(context)?)),
            }
        }
        Ok(Value::String(out))
    }
}

/// Parse a condition: an expression, with or without `{{ }}` around it.
pub fn parse_condition(text: &str) -> Result<Expr, ExprError> {
    let trimmed = text.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
    {
        if !inner.contains("{{") && !inner.contains("}}") {
            return parse(inner);
        }
    }
    parse(trimmed)
}

/// Parse one expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let tokens = lex(text)?;
    let mut p = Parser { tokens, pos: 0 };
    if p.tokens.is_empty() {
        return Err(ExprError("empty expression".to_owned()));
    }
    let e = p.expr(0)?;
    match p.tokens.get(p.pos) {
        None => Ok(e),
        Some(t) => Err(ExprError(format!("unexpected {t} after the expression"))),
    }
}

/// A value as text inside a larger string: strings as they are, `null` as nothing,
/// anything else as compact JSON.
pub fn to_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Truthiness of conditions: `false`, `null`, `0`, `""`, `[]` and `{}` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

impl Expr {
    /// Every reference, in source order.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out
    }

    fn collect_references(&self, out: &mut Vec<Reference>) {
        match self {
            Expr::Literal(_) => {}
            Expr::Var(_) | Expr::Field(..) | Expr::Index(..) => {
                if let Some(r) = self.as_reference() {
                    out.push(r);
                }
                if let Expr::Index(base, index) = self {
                    base.collect_index_references(out);
                    index.collect_references(out);
                }
                if let Expr::Field(base, _) = self {
                    base.collect_index_references(out);
                }
            }
            Expr::Not(e) => e.collect_references(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
                a.collect_references(out);
                b.collect_references(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.collect_references(out)),
        }
    }

    /// References inside the index expressions of a path (the path itself is counted
    /// once, by its outermost node).
    fn collect_index_references(&self, out: &mut Vec<Reference>) {
        match self {
            Expr::Field(base, _) => base.collect_index_references(out),
            Expr::Index(base, index) => {
                base.collect_index_references(out);
                index.collect_references(out);
            }
            _ => {}
        }
    }

    /// The reference a path names, from its root: `inputs.x…`, `steps.s.outputs.o…`,
    /// or a variable. `None` for paths rooted in a literal or a call.
    fn as_reference(&self) -> Option<Reference> {
        let mut chain = Vec::new();
        let mut node = self;
        loop {
            match node {
                Expr::Var(name) => {
                    chain.push(Some(name.as_str()));
                    break;
                }
                Expr::Field(base, name) => {
                    chain.push(Some(name.as_str()));
                    node = base;
                }
                Expr::Index(base, index) => {
                    chain.push(match index.as_ref() {
                        Expr::Literal(Value::String(s)) => Some(s.as_str()),
                        _ => None,
                    });
                    node = base;
                }
                _ => return None,
            }
        }
        chain.reverse();
        let text = self.to_string();
        let invalid = |reason: &str| Reference::Invalid {
            text: text.clone(),
            reason: reason.to_owned(),
        };
        Some(match chain.as_slice() {
            [Some("inputs"), Some(name), ..] => Reference::Input {
                name: (*name).to_owned(),
            },
            [Some("inputs"), ..] => invalid("an input reference is inputs.<name>"),
            [Some("steps"), Some(step), Some("outputs"), Some(output), ..] => {
                Reference::StepOutput {
                    step: (*step).to_owned(),
                    output: (*output).to_owned(),
                }
            }
            [Some("steps"), ..] => invalid("a step reference is steps.<id>.outputs.<name>"),
            [Some(name), ..] => Reference::Variable {
                name: (*name).to_owned(),
            },
            _ => invalid("not a reference"),
        })
    }

    /// The value of the expression over a context object whose keys are the root names
    /// (`inputs`, `steps`, item variables). A missing key is `null`.
    pub fn eval(&self, context: &Value) -> Result<Value, ExprError> {
        Ok(match self {
            Expr::Literal(v) => v.clone(),
            Expr::Var(name) => context.get(name).cloned().unwrap_or(Value::Null),
            Expr::Field(base, name) => base
                .eval(context)?
                .get(name)
                .cloned()
                .unwrap_or(Value::Null),
            Expr::Index(base, index) => {
                let base = base.eval(context)?;
                match index.eval(context)? {
                    Value::String(key) => base.get(&key).cloned().unwrap_or(Value::Null),
                    Value::Number(n) => match n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                        Some(i) => base.get(i).cloned().unwrap_or(Value::Null),
                        None => Value::Null,
                    },
                    other => return Err(ExprError(format!("cannot index with {other}"))),
                }
            }
            Expr::Not(e) => Value::Bool(!truthy(&e.eval(context)?)),
            Expr::And(a, b) => Value::Bool(truthy(&a.eval(context)?) && truthy(&b.eval(context)?)),
            Expr::Or(a, b) => Value::Bool(truthy(&a.eval(context)?) || truthy(&b.eval(context)?)),
            Expr::Compare(op, a, b) => {
                Value::Bool(compare(*op, &a.eval(context)?, &b.eval(context)?)?)
            }
            Expr::Call(name, args) => {
                let values = args
                    .iter()
                    .map(|a| a.eval(context))
                    .collect::<Result<Vec<_>, _>>()?;
                call(name, &values)?
            }
        })
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn compare(op: CompareOp, a: &Value, b: &Value) -> Result<bool, ExprError> {
    use std::cmp::Ordering;
    match op {
        CompareOp::Eq => return Ok(json_eq(a, b)),
        CompareOp::Ne => return Ok(!json_eq(a, b)),
        _ => {}
    }
    let ordering = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y))
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => {
            return Err(ExprError(format!(
                "cannot order {a} and {b}: both must be numbers or both strings"
            )))
        }
    };
    Ok(match op {
        CompareOp::Lt => ordering.is_lt(),
        CompareOp::Le => ordering.is_le(),
        CompareOp::Gt => ordering.is_gt(),
        _ => ordering.is_ge(),
    })
}

fn call(name: &str, args: &[Value]) -> Result<Value, ExprError> {
    let wrong = || {
        ExprError(format!(
            "{name}() does not take {}",
            args.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    Ok(match (name, args) {
        ("len", [Value::String(s)]) => Value::from(s.chars().count()),
        ("len", [Value::Array(a)]) => Value::from(a.len()),
        ("len", [Value::Object(o)]) => Value::from(o.len()),
        ("len", [Value::Null]) => Value::from(0),
        ("contains", [Value::String(s), Value::String(n)]) => Value::Bool(s.contains(n.as_str())),
        ("contains", [Value::Array(a), n]) => Value::Bool(a.iter().any(|v| json_eq(v, n))),
        ("contains", [Value::Object(o), Value::String(k)]) => Value::Bool(o.contains_key(k)),
        ("contains", [Value::Null, _]) => Value::Bool(false),
        ("startsWith", [Value::String(s), Value::String(p)]) => {
            Value::Bool(s.starts_with(p.as_str()))
        }
        ("endsWith", [Value::String(s), Value::String(p)]) => Value::Bool(s.ends_with(p.as_str())),
        ("lower", [Value::String(s)]) => Value::String(s.to_lowercase()),
        ("upper", [Value::String(s)]) => Value::String(s.to_uppercase()),
        ("default", [Value::Null, fallback]) => fallback.clone(),
        ("default", [v, _]) => v.clone(),
        ("join", [Value::Array(a), Value::String(sep)]) => {
            Value::String(a.iter().map(to_text).collect::<Vec<_>>().join(sep))
        }
        ("toJson", [v]) => Value::String(v.to_string()),
        _ => return Err(wrong()),
    })
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(Value::String(s)) => {
                write!(f, "'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
            Expr::Literal(v) => write!(f, "{v}"),
            Expr::Var(n) => f.write_str(n),
            Expr::Field(b, n) => write!(f, "{b}.{n}"),
            Expr::Index(b, i) => write!(f, "{b}[{i}]"),
            Expr::Not(e) => write!(f, "!{e}"),
            Expr::And(a, b) => write!(f, "({a} && {b})"),
            Expr::Or(a, b) => write!(f, "({a} || {b})"),
            Expr::Compare(op, a, b) => {
                let op = match op {
                    CompareOp::Eq => "==",
                    CompareOp::Ne => "!=",
                    CompareOp::Lt => "<",
                    CompareOp::Le => "<=",
                    CompareOp::Gt => ">",
                    CompareOp::Ge => ">=",
                };
                write!(f, "{a} {op} {b}")
            }
            Expr::Call(n, args) => {
                write!(f, "{n}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Num(Value),
    Sym(&'static str),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Name(n) => write!(f, "`{n}`"),
            Token::Str(s) => write!(f, "string '{s}'"),
            Token::Num(n) => write!(f, "number {n}"),
            Token::Sym(s) => write!(f, "`{s}`"),
        }
    }
}

const SYMBOLS: [&str; 15] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", ".", "[", "]", "(", ")", ",",
];

fn lex(text: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(ExprError("unterminated string".to_owned())),
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(&e @ ('\\' | '\'' | '"')) => s.push(e),
                            _ => {
                                return Err(ExprError(
                                    "unknown escape in string; use \\\\, \\', \\\", \\n or \\t"
                                        .to_owned(),
                                ))
                            }
                        }
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&o) => {
                        s.push(o);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Str(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == 'e' || *d == 'E')
            {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            let value: Value = serde_json::from_str(&literal)
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| ExprError(format!("`{literal}` is not a number")))?;
            tokens.push(Token::Num(value));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|d| d.is_alphanumeric() || *d == '_' || *d == '-')
            {
                i += 1;
            }
            tokens.push(Token::Name(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let sym = SYMBOLS
                .iter()
                .find(|s| rest.starts_with(*s))
                .ok_or_else(|| ExprError(format!("unexpected character `{c}`")))?;
            tokens.push(Token::Sym(sym));
            i += sym.len();
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_sym(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Token::Sym(s)) => Some(s),
            _ => None,
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), ExprError> {
        if self.peek_sym() == Some(sym) {
            self.pos += 1;
            return Ok(());
        }
        Err(match self.tokens.get(self.pos) {
            Some(t) => ExprError(format!("expected `{sym}`, found {t}")),
            None => ExprError(format!("expected `{sym}` at the end")),
        })
    }

    /// Binding power of an infix operator: `||` 1, `&&` 2, comparisons 3.
    fn expr(&mut self, min: u8) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while let Some(sym) = self.peek_sym() {
            let power = match sym {
                "||" => 1,
                "&&" => 2,
                "==" | "!=" | "<" | "<=" | ">" | ">=" => 3,
                _ => break,
            };
            if power <= min {
                break;
            }
            self.pos += 1;
            let right = self.expr(power)?;
            left = match sym {
                "||" => Expr::Or(Box::new(left), Box::new(right)),
                "&&" => Expr::And(Box::new(left), Box::new(right)),
                _ => {
                    if matches!(self.peek_sym(), Some("==" | "!=" | "<" | "<=" | ">" | ">=")) {
                        return Err(ExprError(
                            "comparisons do not chain; use && between them".to_owned(),
                        ));
                    }
                    let op = match sym {
                        "==" => CompareOp::Eq,
                        "!=" => CompareOp::Ne,
                        "<" => CompareOp::Lt,
                        "<=" => CompareOp::Le,
                        ">" => CompareOp::Gt,
                        _ => CompareOp::Ge,
                    };
                    Expr::Compare(op, Box::new(left), Box::new(right))
                }
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.peek_sym() == Some("!") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let mut e = self.primary()?;
        loop {
            match self.peek_sym() {
                Some(".") => {
                    self.pos += 1;
                    match self.tokens.get(self.pos) {
                        Some(Token::Name(n)) => {
                            e = Expr::Field(Box::new(e), n.clone());
                            self.pos += 1;
                        }
                        Some(t) => {
                            return Err(ExprError(format!("expected a name after `.`, found {t}")))
                        }
                        None => return Err(ExprError("expected a name after `.`".to_owned())),
                    }
                }
                Some("[") => {
                    self.pos += 1;
                    let index = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(index));
                }
                _ => return Ok(e),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| ExprError("unexpected end of expression".to_owned()))?;
        self.pos += 1;
        match token {
            Token::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Token::Num(n) => Ok(Expr::Literal(n)),
            Token::Name(n) if n == "true" => Ok(Expr::Literal(Value::Bool(true))),
            Token::Name(n) if n == "false" => Ok(Expr::Literal(Value::Bool(false))),
            Token::Name(n) if n == "null" => Ok(Expr::Literal(Value::Null)),
            Token::Name(n) if self.peek_sym() == Some("(") => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek_sym() != Some(")") {
                    loop {
                        args.push(self.expr(0)?);
                        if self.peek_sym() == Some(",") {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(")")?;
                match FUNCTIONS.iter().find(|(name, _)| *name == n) {
                    None => Err(ExprError(format!(
                        "unknown function `{n}`; known: {}",
                        FUNCTIONS
                            .iter()
                            .map(|(f, _)| *f)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                    Some((_, arity)) if *arity != args.len() => Err(ExprError(format!(
                        "{n}() takes {arity} argument(s), found {}",
                        args.len()
                    ))),
                    Some(_) => Ok(Expr::Call(n, args)),
                }
            }
            Token::Name(n) => Ok(Expr::Var(n)),
            Token::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Token::Sym(s) => Err(ExprError(format!("unexpected `{s}`"))),
        }
    }
}

/// Build the evaluation context: `inputs`, `steps` (each `{"outputs": {…}}`), and item
/// variables.
pub fn context(
    inputs: &Map<String, Value>,
    step_outputs: &Map<String, Value>,
    variables: &[(&str, Value)],
) -> Value {
    let mut root = Map::new();
    root.insert("inputs".to_owned(), Value::Object(inputs.clone()));
    let steps: Map<String, Value> = step_outputs
        .iter()
        .map(|(id, outputs)| (id.clone(), serde_json::json!({ "outputs": outputs })))
        .collect();
    root.insert("steps".to_owned(), Value::Object(steps));
    for (name, value) in variables {
        root.insert((*name).to_owned(), value.clone());
    }
    Value::Object(root)
}

#[cfg(test)]
#[path = "expr_tests.rs"]
mod tests;
