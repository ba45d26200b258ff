//! nginx's configuration syntax, read as nginx reads it: words separated by
//! blanks, `;` ending a directive, `{ ... }` a block, `#` a comment to the end of
//! the line, single- and double-quoted strings with backslash escapes, `${var}`
//! inside a word. The body of a `*_by_lua_block { ... }` directive is Lua, not
//! nginx syntax: it is kept as text (braces inside Lua strings and comments do
//! not end it), as lua-nginx-module reads it.
//!
//! Owns: turning one file's text into a tree of [`Directive`]s with their lines.
//! Does not follow `include` (see `nginx::read`) or know what any directive means.

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// The directives inside `{ ... }`, when there is a block.
    pub block: Option<Vec<Directive>>,
    /// The text of a `*_by_lua_block`'s body.
    pub lua: Option<String>,
    /// Where it starts: the file as given to the reader, and the 1-based line.
    pub file: String,
    pub line: usize,
}

impl Directive {
    /// `file:line`, as the report and the comments of the output name it.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// Why a file could not be read as nginx configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SyntaxError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

struct Lexer<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
    file: &'a str,
}

impl<'a> Lexer<'a> {
    fn error(&self, line: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// Skips blanks and comments; the next token and its line, or `None` at the end.
    fn next(&mut self) -> Result<Option<(Token, usize)>, SyntaxError> {
        loop {
            match self.peek() {
                None => return Ok(None),
                Some(c) if c.is_ascii_whitespace() => {
                    self.bump();
                }
                Some(b'#') => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                Some(_) => break,
            }
        }
        let line = self.line;
        let token = match self.peek() {
            Some(b';') => {
                self.bump();
                Token::Semicolon
            }
            Some(b'{') => {
                self.bump();
                Token::Open
            }
            Some(b'}') => {
                self.bump();
                Token::Close
            }
            Some(q @ (b'"' | b'\'')) => {
                self.bump();
                Token::Word(self.quoted(q, line)?)
            }
            _ => Token::Word(self.word()),
        };
        Ok(Some((token, line)))
    }

    fn quoted(&mut self, quote: u8, line: usize) -> Result<String, SyntaxError> {
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None => return Err(self.error(line, "a quoted string is not closed")),
                Some(b'\\') => match self.bump() {
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(c @ (b'"' | b'\'' | b'\\')) => out.push(c),
                    // nginx keeps any other backslash as it is.
                    Some(c) => out.extend_from_slice(&[b'\\', c]),
                    None => return Err(self.error(line, "a quoted string is not closed")),
                },
                Some(c) if c == quote => break,
                Some(c) => out.push(c),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn word(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                b';' | b'{' | b'}' | b'"' | b'\'' => break,
                c if c.is_ascii_whitespace() => break,
                b'$' if self.text.get(self.at + 1) == Some(&b'{') => {
                    // `${var}`: the braces belong to the word.
                    while let Some(c) = self.bump() {
                        out.push(c);
                        if c == b'}' {
                            break;
                        }
                    }
                }
                b'\\' => {
                    // As nginx copies a word: \" \' \\ lose the backslash, \t \r \n
                    // become the control character, anything else keeps it
                    // (`\.php$` stays a regular expression).
                    self.bump();
                    match self.bump() {
                        Some(c @ (b'"' | b'\'' | b'\\')) => out.push(c),
                        Some(b't') => out.push(b'\t'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b'n') => out.push(b'\n'),
                        Some(c) => out.extend_from_slice(&[b'\\', c]),
                        None => out.push(b'\\'),
                    }
                }
                _ => {
                    out.push(c);
                    self.bump();
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// After a Lua block's `{`: its body up to the matching `}`, which is consumed.
    fn lua_body(&mut self, line: usize) -> Result<String, SyntaxError> {
        let start = self.at;
        let mut depth = 1usize;
        loop {
            let Some(c) = self.bump() else {
                return Err(self.error(line, "a Lua block is not closed"));
            };
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        let body = &self.text[start..self.at - 1];
                        return Ok(String::from_utf8_lossy(body).into_owned());
                    }
                }
                b'"' | b'\'' => self.skip_lua_string(c),
                b'[' if matches!(self.peek(), Some(b'[' | b'=')) => self.skip_lua_long_bracket(),
                b'-' if self.peek() == Some(b'-') => {
                    self.bump();
                    if self.peek() == Some(b'[') {
                        self.bump();
                        if matches!(self.peek(), Some(b'[' | b'=')) {
                            self.skip_lua_long_bracket();
                            continue;
                        }
                    }
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                _ => {}
            }
        }
    }

    fn skip_lua_string(&mut self, quote: u8) {
        while let Some(c) = self.bump() {
            match c {
                b'\\' => {
                    self.bump();
                }
                b'\n' => return, // an unclosed short string ends at the line
                c if c == quote => return,
                _ => {}
            }
        }
    }

    /// After `[`: `[[ ... ]]` or `[==[ ... ]==]`.
    fn skip_lua_long_bracket(&mut self) {
        let mut level = 0;
        while self.peek() == Some(b'=') {
            self.bump();
            level += 1;
        }
        if self.peek() != Some(b'[') {
            return; // `[=` that opens nothing: an index expression
        }
        self.bump();
        let mut close = vec![b']'];
        close.extend(std::iter::repeat_n(b'=', level));
        close.push(b']');
        while self.peek().is_some() {
            if self.text[self.at..].starts_with(&close) {
                for _ in 0..close.len() {
                    self.bump();
                }
                return;
            }
            self.bump();
        }
    }
}

/// Whether `name` takes a Lua body instead of a block of directives.
fn is_lua_block(name: &str) -> bool {
    name.ends_with("_by_lua_block") || name == "lua_block"
}

/// Reads the text of one file; `file` is how it is named in errors and places.
pub fn parse(text: &str, file: &str) -> Result<Vec<Directive>, SyntaxError> {
    let mut lx = Lexer {
        text: text.as_bytes(),
        at: 0,
        line: 1,
        file,
    };
    let (list, closed_at) = parse_block(&mut lx, None)?;
    if let Some(line) = closed_at {
        return Err(lx.error(line, "unexpected \"}\""));
    }
    Ok(list)
}

/// Directives up to the end (`opened` is `None`) or the `}` that closes the
/// block opened at line `opened`. Returns the line of a stray `}` at top level.
fn parse_block(
    lx: &mut Lexer<'_>,
    opened: Option<usize>,
) -> Result<(Vec<Directive>, Option<usize>), SyntaxError> {
    let mut list = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = 0;
    loop {
        let Some((token, line)) = lx.next()? else {
            if let Some(opened) = opened {
                return Err(lx.error(opened, "a block opened here is not closed"));
            }
            if !words.is_empty() {
                return Err(lx.error(start, "unexpected end of file, expecting \";\" or \"}\""));
            }
            return Ok((list, None));
        };
        match token {
            Token::Word(w) => {
                if words.is_empty() {
                    start = line;
                }
                words.push(w);
            }
            Token::Semicolon => {
                if words.is_empty() {
                    return Err(lx.error(line, "unexpected \";\""));
                }
                let name = words.remove(0);
                list.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    block: None,
                    lua: None,
                    file: lx.file.to_string(),
                    line: start,
                });
            }
            Token::Open => {
                if words.is_empty() {
                    return Err(lx.error(line, "unexpected \"{\""));
                }
                let name = words.remove(0);
                let args = std::mem::take(&mut words);
                let (block, lua) = if is_lua_block(&name) {
                    (None, Some(lx.lua_body(line)?))
                } else {
                    let (inner, _) = parse_block(lx, Some(line))?;
                    (Some(inner), None)
                };
                list.push(Directive {
                    name,
                    args,
                    block,
                    lua,
                    file: lx.file.to_string(),
                    line: start,
                });
            }
            Token::Close => {
                if !words.is_empty() {
                    return Err(lx.error(line, "unexpected \"}\", expecting \";\""));
                }
                return match opened {
                    Some(_) => Ok((list, None)),
                    None => Ok((list, Some(line))),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[Directive]) -> Vec<&str> {
        list.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn directives_blocks_and_lines() {
        let text =
            "user nginx;\n\nhttp {\n  upstream a {\n    server 10.0.0.1:80 weight=2;\n  }\n}\n";
        let list = parse(text, "nginx.conf").unwrap();
        assert_eq!(names(&list), ["user", "http"]);
        assert_eq!(list[1].line, 3);
        let up = &list[1].block.as_ref().unwrap()[0];
        assert_eq!(up.name, "upstream");
        assert_eq!(up.args, ["a"]);
        let server = &up.block.as_ref().unwrap()[0];
        assert_eq!(server.args, ["10.0.0.1:80", "weight=2"]);
        assert_eq!(server.place(), "nginx.conf:5");
    }

    #[test]
    fn quotes_escapes_comments_and_variables() {
        let text = concat!(
            "# a comment { ; }\n",
            "set $x \"a b;c\\\"d\"; # trailing\n",
            "set $y 'it s' \"x\";\n",
            "return 200 ${host}ok;\n",
            "add_header X a\\ b;\n",
        );
        let list = parse(text, "f").unwrap();
        assert_eq!(list[0].args, ["$x", "a b;c\"d"]);
        assert_eq!(list[1].args, ["$y", "it s", "x"]);
        assert_eq!(list[2].args, ["200", "${host}ok"]);
        assert_eq!(list[3].args, ["X", "a\\ b"]);
        let re = parse("location ~ \\.php$ { }\n", "f").unwrap();
        assert_eq!(re[0].args, ["~", "\\.php$"]);
    }

    #[test]
    fn a_lua_block_is_kept_as_text_whatever_braces_its_strings_hold() {
        let text = concat!(
            "init_worker_by_lua_block {\n",
            "    local t = { a = \"}\", b = '{' } -- a } in a comment\n",
            "    local s = [[ } ]]\n",
            "    --[[ } long comment ]]\n",
            "}\n",
            "after 1;\n",
        );
        let list = parse(text, "f").unwrap();
        assert_eq!(names(&list), ["init_worker_by_lua_block", "after"]);
        let lua = list[0].lua.as_deref().unwrap();
        assert!(lua.contains("local s = [[ } ]]"), "{lua}");
        assert_eq!(list[1].line, 6);
    }

    #[test]
    fn broken_files_are_errors_with_their_line() {
        let e = parse("http {\n  server {\n", "f").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "a block opened here is not closed")
        );
        let e = parse("a b\n", "f").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("a;\n}\n", "f").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "unexpected \"}\""));
        let e = parse("set $x \"open;\n", "f").unwrap_err();
        assert_eq!(e.message, "a quoted string is not closed");
        assert!(parse("x {\n", "f").is_err());
        assert!(parse("content_by_lua_block { if x then\n", "f").is_err());
    }
}
