/**
 * A small interpreter for the subset of Go text/template + Sprig that the Cocoon chart uses,
 * so that the chart's templates can be rendered in tests without a helm binary and compared
 * with the TypeScript renderer. Not a general Helm implementation: it supports exactly
 * define/include, if/else if/else, with, range (lists, and `$k, $v :=` over maps with sorted
 * keys), variables, pipelines, parentheses, and the functions listed in FUNCS. Anything else
 * is an error, so a template using more fails the test loudly instead of rendering wrongly.
 */
import { stringify } from 'yaml';

type Value = unknown;

interface TextNode { t: 'text'; text: string }
interface ActionNode { t: 'action'; expr: string }
interface IfNode { t: 'if'; branches: Array<{ cond: string | null; body: Node[] }> }
interface WithNode { t: 'with'; expr: string; body: Node[]; else: Node[] }
interface RangeNode { t: 'range'; expr: string; vars: string[]; body: Node[] }
type Node = TextNode | ActionNode | IfNode | WithNode | RangeNode;

interface Token { kind: 'text' | 'action'; text: string }

function lex(src: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    if (open < 0) {
      tokens.push({ kind: 'text', text: src.slice(i) });
      break;
    }
    let text = src.slice(i, open);
    let start = open + 2;
    if (src[start] === '-' && /\s/.test(src[start + 1] ?? '')) {
      text = text.replace(/\s+$/, '');
      start += 1;
    }
    tokens.push({ kind: 'text', text });
    const close = src.indexOf('}}', start);
    if (close < 0) throw new Error('unclosed action');
    let end = close;
    let trimAfter = false;
    if (src[close - 1] === '-' && /\s/.test(src[close - 2] ?? '')) {
      end = close - 1;
      trimAfter = true;
    }
    tokens.push({ kind: 'action', text: src.slice(start, end).trim() });
    i = close + 2;
    if (trimAfter) while (i < src.length && /\s/.test(src[i] as string)) i++;
  }
  return tokens.filter((t) => !(t.kind === 'action' && t.text.startsWith('/*')));
}

function parseNodes(tokens: Token[], pos: { i: number }, defines: Map<string, Node[]>, stopAt: string[]): { nodes: Node[]; stop: string } {
  const nodes: Node[] = [];
  while (pos.i < tokens.length) {
    const tok = tokens[pos.i++] as Token;
    if (tok.kind === 'text') {
      if (tok.text) nodes.push({ t: 'text', text: tok.text });
      continue;
    }
    const a = tok.text;
    const word = a.split(/\s+/)[0] ?? '';
    if (stopAt.includes(word)) return { nodes, stop: a };
    if (word === 'define') {
      const name = JSON.parse(a.slice(6).trim()) as string;
      const { nodes: body } = parseNodes(tokens, pos, defines, ['end']);
      defines.set(name, body);
    } else if (word === 'if') {
      const branches: IfNode['branches'] = [];
      let cond: string | null = a.slice(2).trim();
      for (;;) {
        const r = parseNodes(tokens, pos, defines, ['else', 'end']);
        branches.push({ cond, body: r.nodes });
        if (r.stop === 'end') break;
        const rest = r.stop.slice(4).trim();
        cond = rest.startsWith('if ') ? rest.slice(3).trim() : null;
      }
      nodes.push({ t: 'if', branches });
    } else if (word === 'with') {
      const r = parseNodes(tokens, pos, defines, ['else', 'end']);
      let elseBody: Node[] = [];
      if (r.stop !== 'end') elseBody = parseNodes(tokens, pos, defines, ['end']).nodes;
      nodes.push({ t: 'with', expr: a.slice(4).trim(), body: r.nodes, else: elseBody });
    } else if (word === 'range') {
      let expr = a.slice(5).trim();
      let vars: string[] = [];
      const m = expr.match(/^((?:\$\w+\s*,\s*)?\$\w+)\s*:=\s*(.*)$/);
      if (m) {
        vars = (m[1] as string).split(',').map((s) => s.trim());
        expr = m[2] as string;
      }
      const r = parseNodes(tokens, pos, defines, ['end']);
      nodes.push({ t: 'range', expr, vars, body: r.nodes });
    } else if (word === 'end' || word === 'else') {
      throw new Error(`unexpected {{${a}}}`);
    } else {
      nodes.push({ t: 'action', expr: a });
    }
  }
  if (stopAt.length) throw new Error(`missing {{end}} (waiting for ${stopAt.join('/')})`);
  return { nodes, stop: '' };
}

function truthy(v: Value): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return true;
}

function str(v: Value): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function indentText(n: number, s: string): string {
  const pad = ' '.repeat(n);
  return s.split('\n').map((l) => pad + l).join('\n');
}

class Scope {
  constructor(
    readonly vars: Map<string, Value>,
    readonly parent?: Scope,
  ) {}
  get(name: string): Value {
    if (this.vars.has(name)) return this.vars.get(name);
    if (this.parent) return this.parent.get(name);
    throw new Error(`undefined variable ${name}`);
  }
  child(): Scope {
    return new Scope(new Map(), this);
  }
}

export class GoTemplates {
  private readonly defines = new Map<string, Node[]>();
  private readonly files = new Map<string, Node[]>();

  add(name: string, src: string): void {
    const { nodes } = parseNodes(lex(src), { i: 0 }, this.defines, []);
    this.files.set(name, nodes);
  }

  render(name: string, root: Value): string {
    const nodes = this.files.get(name);
    if (!nodes) throw new Error(`no template ${name}`);
    return this.exec(nodes, root, new Scope(new Map([['$', root]])));
  }

  private exec(nodes: Node[], dot: Value, scope: Scope): string {
    let out = '';
    for (const n of nodes) {
      switch (n.t) {
        case 'text':
          out += n.text;
          break;
        case 'action': {
          const m = n.expr.match(/^(\$\w+)\s*:=\s*(.*)$/);
          if (m) scope.vars.set(m[1] as string, this.pipeline(m[2] as string, dot, scope));
          else out += str(this.pipeline(n.expr, dot, scope));
          break;
        }
        case 'if': {
          for (const b of n.branches) {
            if (b.cond === null || truthy(this.pipeline(b.cond, dot, scope))) {
              out += this.exec(b.body, dot, scope.child());
              break;
            }
          }
          break;
        }
        case 'with': {
          const v = this.pipeline(n.expr, dot, scope);
          out += truthy(v) ? this.exec(n.body, v, scope.child()) : this.exec(n.else, dot, scope.child());
          break;
        }
        case 'range': {
          const v = this.pipeline(n.expr, dot, scope);
          const entries: Array<[Value, Value]> = Array.isArray(v)
            ? v.map((x, i) => [i, x])
            : v && typeof v === 'object'
              ? Object.keys(v).sort().map((k) => [k, (v as Record<string, Value>)[k]])
              : [];
          for (const [k, x] of entries) {
            const s = scope.child();
            if (n.vars.length === 1) s.vars.set(n.vars[0] as string, x);
            if (n.vars.length === 2) {
              s.vars.set(n.vars[0] as string, k);
              s.vars.set(n.vars[1] as string, x);
            }
            out += this.exec(n.body, x, s);
          }
          break;
        }
      }
    }
    return out;
  }

  private pipeline(src: string, dot: Value, scope: Scope): Value {
    const commands = splitTop(src, '|');
    let acc: Value = undefined;
    commands.forEach((cmd, i) => {
      const args = tokenizeArgs(cmd);
      const extra = i === 0 ? [] : [acc];
      acc = this.command(args, extra, dot, scope);
    });
    return acc;
  }

  private command(args: string[], extra: Value[], dot: Value, scope: Scope): Value {
    const head = args[0];
    if (head === undefined) throw new Error('empty command');
    if (/^[a-zA-Z]\w*$/.test(head) && !['true', 'false', 'nil'].includes(head)) {
      const vals = args.slice(1).map((a) => this.operand(a, dot, scope));
      return this.call(head, [...vals, ...extra]);
    }
    if (args.length !== 1 || extra.length) throw new Error(`cannot call a value: ${args.join(' ')}`);
    return this.operand(head, dot, scope);
  }

  private operand(a: string, dot: Value, scope: Scope): Value {
    if (a.startsWith('(')) return this.pipeline(a.slice(1, -1), dot, scope);
    if (a.startsWith('"')) return JSON.parse(a) as string;
    if (/^-?\d+$/.test(a)) return Number(a);
    if (a === 'true') return true;
    if (a === 'false') return false;
    if (a === 'nil') return null;
    let base: Value;
    let path: string;
    if (a.startsWith('$')) {
      const m = a.match(/^(\$\w*)(.*)$/) as RegExpMatchArray;
      base = scope.get(m[1] as string);
      path = m[2] as string;
    } else if (a.startsWith('.')) {
      base = dot;
      path = a === '.' ? '' : a;
    } else {
      throw new Error(`unsupported operand ${a}`);
    }
    for (const key of path.split('.').filter(Boolean)) {
      base = base && typeof base === 'object' ? (base as Record<string, Value>)[key] : undefined;
    }
    return base;
  }

  private call(fn: string, a: Value[]): Value {
    switch (fn) {
      case 'include': {
        const body = this.defines.get(a[0] as string);
        if (!body) throw new Error(`no define ${String(a[0])}`);
        return this.exec(body, a[1], new Scope(new Map([['$', a[1]]])));
      }
      case 'printf': {
        let i = 1;
        return (a[0] as string).replace(/%s/g, () => str(a[i++]));
      }
      case 'default':
        return truthy(a[1]) ? a[1] : a[0];
      case 'eq':
        return a[0] === a[1];
      case 'ne':
        return a[0] !== a[1];
      case 'gt':
        return (a[0] as number) > (a[1] as number);
      case 'and':
        return a.find((x) => !truthy(x)) ?? a[a.length - 1];
      case 'or':
        return a.find((x) => truthy(x)) ?? a[a.length - 1];
      case 'not':
        return !truthy(a[0]);
      case 'int':
        return Math.trunc(Number(a[0] ?? 0));
      case 'quote':
        return JSON.stringify(str(a[0]));
      case 'toYaml':
        return stringify(a[0], { sortMapEntries: true, lineWidth: 0 }).replace(/\n$/, '');
      case 'nindent':
        return '\n' + indentText(a[0] as number, str(a[1]));
      case 'indent':
        return indentText(a[0] as number, str(a[1]));
      case 'trunc':
        return str(a[1]).slice(0, a[0] as number);
      case 'required':
        if (!truthy(a[1])) throw new Error(`required: ${String(a[0])}`);
        return a[1];
      case 'fail':
        throw new Error(`fail: ${String(a[0])}`);
      default:
        throw new Error(`unsupported function ${fn}`);
    }
  }
}

/** Splits on `sep` outside quotes and parentheses. */
function splitTop(src: string, sep: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote = false;
  let cur = '';
  for (let i = 0; i < src.length; i++) {
    const ch = src[i] as string;
    if (quote) {
      cur += ch;
      if (ch === '\\') cur += src[++i] ?? '';
      else if (ch === '"') quote = false;
      continue;
    }
    if (ch === '"') quote = true;
    else if (ch === '(') depth++;
    else if (ch === ')') depth--;
    if (ch === sep && depth === 0) {
      parts.push(cur.trim());
      cur = '';
      continue;
    }
    cur += ch;
  }
  parts.push(cur.trim());
  return parts;
}

/** Splits a command into operands: words, "strings" and (sub pipelines). */
function tokenizeArgs(src: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < src.length) {
    const ch = src[i] as string;
    if (/\s/.test(ch)) {
      i++;
      continue;
    }
    let j = i;
    if (ch === '"') {
      j++;
      while (j < src.length && src[j] !== '"') j += src[j] === '\\' ? 2 : 1;
      j++;
    } else if (ch === '(') {
      let depth = 0;
      let quote = false;
      for (; j < src.length; j++) {
        const c = src[j];
        if (quote) {
          if (c === '\\') j++;
          else if (c === '"') quote = false;
        } else if (c === '"') quote = true;
        else if (c === '(') depth++;
        else if (c === ')' && --depth === 0) {
          j++;
          break;
        }
      }
    } else {
      while (j < src.length && !/\s/.test(src[j] as string)) j++;
    }
    out.push(src.slice(i, j));
    i = j;
  }
  return out;
}
