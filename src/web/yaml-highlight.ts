/**
 * A tiny YAML highlighter for policy files: one line at a time, no parsing of structure.
 * Produces tokens the view renders as <span class="y-…">; text is never interpreted as HTML.
 */
export type YamlToken = { t: 'key' | 'str' | 'num' | 'bool' | 'comment' | 'punct' | 'tmpl' | 'anchor' | 'plain'; v: string };

const SCALAR_BOOL = /^(true|false|null|~|yes|no|on|off)$/i;
const SCALAR_NUM = /^[-+]?(0x[0-9a-f]+|0o[0-7]+|\d+(\.\d+)?([eE][-+]?\d+)?)$/i;

function pushString(out: YamlToken[], s: string): void {
  // Templates ({{ secret.x }}) inside strings stand out.
  let rest = s;
  for (;;) {
    const i = rest.indexOf('{{');
    const j = i >= 0 ? rest.indexOf('}}', i + 2) : -1;
    if (i < 0 || j < 0) break;
    if (i > 0) out.push({ t: 'str', v: rest.slice(0, i) });
    out.push({ t: 'tmpl', v: rest.slice(i, j + 2) });
    rest = rest.slice(j + 2);
  }
  if (rest) out.push({ t: 'str', v: rest });
}

function scalar(out: YamlToken[], word: string): void {
  const trimmed = word.trim();
  if (!trimmed) out.push({ t: 'plain', v: word });
  else if (SCALAR_BOOL.test(trimmed)) out.push({ t: 'bool', v: word });
  else if (SCALAR_NUM.test(trimmed)) out.push({ t: 'num', v: word });
  else if (/^[&*!]/.test(trimmed)) out.push({ t: 'anchor', v: word });
  else pushString(out, word);
}

/** Tokens of one line (without its newline). Concatenating the values gives the line back. */
export function highlightYamlLine(line: string): YamlToken[] {
  const out: YamlToken[] = [];
  let i = 0;
  let expectKey = true;
  let word = '';
  const flushWord = () => {
    if (word) scalar(out, word);
    word = '';
  };
  while (i < line.length) {
    const c = line[i] as string;
    if (c === '#' && (i === 0 || /\s/.test(line[i - 1] as string))) {
      flushWord();
      out.push({ t: 'comment', v: line.slice(i) });
      return out;
    }
    if (c === '"' || c === "'") {
      flushWord();
      let j = i + 1;
      while (j < line.length) {
        if (c === '"' && line[j] === '\\') j += 2;
        else if (line[j] === c) {
          if (c === "'" && line[j + 1] === "'") j += 2;
          else break;
        } else j++;
      }
      const quoted = line.slice(i, Math.min(j + 1, line.length));
      const after = line.slice(i + quoted.length);
      if (expectKey && /^\s*:(\s|$)/.test(after)) out.push({ t: 'key', v: quoted });
      else pushString(out, quoted);
      i += quoted.length;
      expectKey = false;
      continue;
    }
    if (c === '-' && expectKey && word.trim() === '' && (line[i + 1] === ' ' || i + 1 === line.length)) {
      flushWord();
      out.push({ t: 'punct', v: '-' });
      i++;
      continue;
    }
    if ('{}[],'.includes(c)) {
      flushWord();
      out.push({ t: 'punct', v: c });
      expectKey = c === '{' || c === ',';
      i++;
      continue;
    }
    if (c === ':' && (line[i + 1] === ' ' || i + 1 === line.length) && word.trim() !== '' && expectKey) {
      const lead = /^\s*/.exec(word)?.[0] ?? '';
      if (lead) out.push({ t: 'plain', v: lead });
      out.push({ t: 'key', v: word.slice(lead.length) });
      out.push({ t: 'punct', v: ':' });
      word = '';
      expectKey = false;
      i++;
      continue;
    }
    word += c;
    i++;
  }
  flushWord();
  return out;
}

export function highlightYaml(text: string): YamlToken[][] {
  return text.replace(/\n$/, '').split('\n').map(highlightYamlLine);
}
