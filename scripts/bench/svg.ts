/**
 * A small hand-written SVG line chart (no dependencies): log-scale x, log-scale y,
 * one line per series with markers and min–max whiskers, axes with tick labels,
 * grid, legend and title. Enough for the benchmark report, nothing more.
 */

export interface Point {
  x: number;
  /** The median. */
  y: number;
  /** The spread drawn as a whisker (min and max). */
  lo: number;
  hi: number;
}

export type Marker = 'circle' | 'square' | 'triangle' | 'diamond';

export interface Series {
  label: string;
  color: string;
  /** stroke-dasharray, '' for solid. */
  dash: string;
  marker: Marker;
  points: Point[];
}

export interface ChartSpec {
  title: string;
  /** Smaller line under the title (machine, date, method). */
  subtitle: string;
  xLabel: string;
  yLabel: string;
  /** Where x ticks go, and their labels. */
  xTicks: { x: number; label: string }[];
  series: Series[];
  /** A note at the bottom, e.g. the data source. */
  footnote: string;
}

const W = 860;
const H = 520;
const M = { left: 78, right: 230, top: 78, bottom: 84 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;
const FONT = 'font-family="system-ui, -apple-system, \'Segoe UI\', Helvetica, Arial, sans-serif"';

function esc(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;');
}

function n(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

/** Tick values 1, 2, 5 × 10^k that lie within [lo, hi]. */
function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)) - 1; e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(Number(v.toPrecision(3)));
    }
  }
  return out;
}

/** The nearest 1, 2, 5 × 10^k value above (`up`) or below `v`. */
function round125(v: number, up: boolean): number {
  const e = Math.floor(Math.log10(v));
  const steps = [1, 2, 5, 10].map((m) => m * 10 ** e);
  if (up) return steps.find((s) => s >= v * 0.999) ?? steps[3]!;
  return [...steps].reverse().find((s) => s <= v * 1.001) ?? steps[0]!;
}

function tickLabel(v: number): string {
  return v >= 1 ? v.toString() : v.toPrecision(1);
}

function marker(kind: Marker, x: number, y: number, color: string): string {
  const r = 4.5;
  const common = `fill="${color}" stroke="#fff" stroke-width="1"`;
  switch (kind) {
    case 'circle':
      return `<circle cx="${n(x)}" cy="${n(y)}" r="${r}" ${common}/>`;
    case 'square':
      return `<rect x="${n(x - r)}" y="${n(y - r)}" width="${2 * r}" height="${2 * r}" ${common}/>`;
    case 'triangle':
      return `<path d="M${n(x)},${n(y - r - 1)} L${n(x + r + 1)},${n(y + r)} L${n(x - r - 1)},${n(y + r)} Z" ${common}/>`;
    case 'diamond':
      return `<path d="M${n(x)},${n(y - r - 1)} L${n(x + r + 1)},${n(y)} L${n(x)},${n(y + r + 1)} L${n(x - r - 1)},${n(y)} Z" ${common}/>`;
  }
}

export function lineChartSvg(spec: ChartSpec): string {
  const xs = spec.xTicks.map((t) => t.x);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const ys = spec.series.flatMap((s) => s.points.flatMap((p) => [p.lo, p.hi, p.y]));
  const positive = ys.filter((v) => v > 0 && Number.isFinite(v));
  // Round the y range out to 1-2-5 steps, with a margin, so no line touches the frame.
  const yMin = round125(Math.min(...positive) / 1.15, false);
  const yMax = round125(Math.max(...positive) * 1.15, true);
  const lx0 = Math.log10(xMin) - 0.08;
  const lx1 = Math.log10(xMax) + 0.08;
  const ly0 = Math.log10(yMin);
  const ly1 = Math.log10(yMax);
  const px = (x: number) => M.left + ((Math.log10(x) - lx0) / (lx1 - lx0)) * PW;
  const py = (y: number) => M.top + PH - ((Math.log10(y) - ly0) / (ly1 - ly0)) * PH;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(spec.title)}">`,
    `<title>${esc(spec.title)}</title>`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<g ${FONT} fill="#222">`,
    `<text x="${M.left}" y="30" font-size="18" font-weight="600">${esc(spec.title)}</text>`,
    `<text x="${M.left}" y="52" font-size="12" fill="#555">${esc(spec.subtitle)}</text>`,
  );

  // Grid and y ticks.
  out.push('<g font-size="12" text-anchor="end">');
  for (const t of logTicks(yMin, yMax)) {
    const y = py(t);
    const major = Math.abs(Math.log10(t) - Math.round(Math.log10(t))) < 1e-9;
    out.push(
      `<line x1="${M.left}" y1="${n(y)}" x2="${M.left + PW}" y2="${n(y)}" stroke="${major ? '#c8c8c8' : '#ececec'}" stroke-width="1"/>`,
      `<text x="${M.left - 8}" y="${n(y + 4)}">${tickLabel(t)}</text>`,
    );
  }
  out.push('</g>');
  // X ticks.
  out.push('<g font-size="12" text-anchor="middle">');
  for (const t of spec.xTicks) {
    const x = px(t.x);
    out.push(
      `<line x1="${n(x)}" y1="${M.top}" x2="${n(x)}" y2="${M.top + PH}" stroke="#ececec" stroke-width="1"/>`,
      `<line x1="${n(x)}" y1="${M.top + PH}" x2="${n(x)}" y2="${M.top + PH + 5}" stroke="#444"/>`,
      `<text x="${n(x)}" y="${M.top + PH + 20}">${esc(t.label)}</text>`,
    );
  }
  out.push('</g>');
  // Frame (axes).
  out.push(
    `<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" fill="none" stroke="#444" stroke-width="1"/>`,
    `<text x="${n(M.left + PW / 2)}" y="${M.top + PH + 46}" font-size="13" text-anchor="middle">${esc(spec.xLabel)}</text>`,
    `<text transform="translate(22 ${n(M.top + PH / 2)}) rotate(-90)" font-size="13" text-anchor="middle">${esc(spec.yLabel)}</text>`,
  );

  // Series: whiskers, line, markers.
  for (const s of spec.series) {
    const pts = s.points.filter((p) => p.y > 0);
    out.push(`<g>`);
    for (const p of pts) {
      const x = px(p.x);
      out.push(
        `<line x1="${n(x)}" y1="${n(py(p.lo))}" x2="${n(x)}" y2="${n(py(p.hi))}" stroke="${s.color}" stroke-width="1.5" opacity="0.7"/>`,
      );
    }
    const d = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${n(px(p.x))},${n(py(p.y))}`).join(' ');
    out.push(
      `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`,
    );
    for (const p of pts) out.push(marker(s.marker, px(p.x), py(p.y), s.color));
    out.push('</g>');
  }

  // Legend, right of the plot.
  const lx = M.left + PW + 18;
  let ly = M.top + 8;
  out.push(`<g font-size="12.5">`);
  for (const s of spec.series) {
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 30}" y2="${ly}" stroke="${s.color}" stroke-width="2.2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`,
      marker(s.marker, lx + 15, ly, s.color),
      `<text x="${lx + 38}" y="${ly + 4}">${esc(s.label)}</text>`,
    );
    ly += 24;
  }
  out.push(
    `<text x="${lx}" y="${ly + 10}" font-size="11" fill="#555">whiskers: min–max of the runs</text>`,
    '</g>',
  );
  out.push(
    `<text x="${M.left}" y="${H - 14}" font-size="11" fill="#666">${esc(spec.footnote)}</text>`,
    '</g>',
    '</svg>',
    '',
  );
  return out.join('\n');
}

export interface BarSeries {
  label: string;
  color: string;
  /** One value per category (NaN: none), with its whisker. */
  values: { y: number; lo: number; hi: number }[];
}

export interface BarChartSpec {
  title: string;
  subtitle: string;
  yLabel: string;
  categories: string[];
  series: BarSeries[];
  /** A horizontal reference line (e.g. 1 for "same as the baseline"), with its label. */
  reference?: { y: number; label: string };
  /** Short horizontal marks per category (e.g. goals), with a legend label. */
  marks?: { label: string; values: number[] };
  footnote: string;
}

/** A grouped bar chart on a linear y axis from 0, with min–max whiskers. */
export function barChartSvg(spec: BarChartSpec): string {
  const all = spec.series.flatMap((s) => s.values.flatMap((v) => [v.y, v.hi]));
  const finite = [...all, spec.reference?.y ?? 0, ...(spec.marks?.values ?? [])].filter((v) =>
    Number.isFinite(v),
  );
  const top = Math.max(0.1, ...finite) * 1.12;
  const step = top > 2 ? 0.5 : top > 1 ? 0.2 : 0.1;
  const yMax = Math.ceil(top / step) * step;
  const py = (y: number) => M.top + PH - (y / yMax) * PH;
  const groupW = PW / spec.categories.length;
  const barW = Math.min(34, (groupW * 0.78) / spec.series.length);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(spec.title)}">`,
    `<title>${esc(spec.title)}</title>`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<g ${FONT} fill="#222">`,
    `<text x="${M.left}" y="30" font-size="18" font-weight="600">${esc(spec.title)}</text>`,
    `<text x="${M.left}" y="52" font-size="12" fill="#555">${esc(spec.subtitle)}</text>`,
    '<g font-size="12" text-anchor="end">',
  );
  for (let t = 0; t <= yMax + 1e-9; t += step) {
    const y = py(t);
    out.push(
      `<line x1="${M.left}" y1="${n(y)}" x2="${M.left + PW}" y2="${n(y)}" stroke="#ececec" stroke-width="1"/>`,
      `<text x="${M.left - 8}" y="${n(y + 4)}">${Number(t.toFixed(2))}</text>`,
    );
  }
  out.push('</g>', '<g font-size="12" text-anchor="middle">');
  spec.categories.forEach((c, i) => {
    const cx = M.left + groupW * (i + 0.5);
    const words = c.split(' ');
    const mid = Math.ceil(words.length / 2);
    const lines =
      words.length > 2 ? [words.slice(0, mid).join(' '), words.slice(mid).join(' ')] : [c];
    lines.forEach((l, k) => {
      out.push(`<text x="${n(cx)}" y="${M.top + PH + 20 + 15 * k}">${esc(l)}</text>`);
    });
  });
  out.push('</g>');
  spec.series.forEach((s, si) => {
    out.push('<g>');
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v.y)) return;
      const x0 = M.left + groupW * (i + 0.5) - (barW * spec.series.length) / 2 + barW * si;
      out.push(
        `<rect x="${n(x0 + 1)}" y="${n(py(v.y))}" width="${n(barW - 2)}" height="${n(py(0) - py(v.y))}" fill="${s.color}"/>`,
      );
      if (Number.isFinite(v.lo) && Number.isFinite(v.hi) && v.hi > v.lo) {
        const cx = x0 + barW / 2;
        out.push(
          `<line x1="${n(cx)}" y1="${n(py(v.lo))}" x2="${n(cx)}" y2="${n(py(v.hi))}" stroke="#333" stroke-width="1.2"/>`,
        );
      }
      out.push(
        `<text x="${n(x0 + barW / 2)}" y="${n(py(Math.max(v.y, Number.isFinite(v.hi) ? v.hi : v.y)) - 5)}" font-size="10.5" text-anchor="middle">${v.y.toFixed(2)}</text>`,
      );
    });
    out.push('</g>');
  });
  if (spec.marks) {
    spec.marks.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const cx = M.left + groupW * (i + 0.5);
      const half = (barW * spec.series.length) / 2 + 4;
      out.push(
        `<line x1="${n(cx - half)}" y1="${n(py(v))}" x2="${n(cx + half)}" y2="${n(py(v))}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5 3"/>`,
      );
    });
  }
  if (spec.reference) {
    const y = py(spec.reference.y);
    out.push(
      `<line x1="${M.left}" y1="${n(y)}" x2="${M.left + PW}" y2="${n(y)}" stroke="#444" stroke-width="1.5"/>`,
    );
  }
  out.push(
    `<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" fill="none" stroke="#444" stroke-width="1"/>`,
    `<text transform="translate(22 ${n(M.top + PH / 2)}) rotate(-90)" font-size="13" text-anchor="middle">${esc(spec.yLabel)}</text>`,
  );
  const lx = M.left + PW + 18;
  let ly = M.top + 8;
  out.push('<g font-size="12.5">');
  for (const s of spec.series) {
    out.push(
      `<rect x="${lx}" y="${ly - 7}" width="22" height="14" fill="${s.color}"/>`,
      `<text x="${lx + 30}" y="${ly + 4}">${esc(s.label)}</text>`,
    );
    ly += 24;
  }
  if (spec.reference) {
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 22}" y2="${ly}" stroke="#444" stroke-width="1.5"/>`,
      `<text x="${lx + 30}" y="${ly + 4}">${esc(spec.reference.label)}</text>`,
    );
    ly += 24;
  }
  if (spec.marks) {
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 22}" y2="${ly}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5 3"/>`,
      `<text x="${lx + 30}" y="${ly + 4}">${esc(spec.marks.label)}</text>`,
    );
    ly += 24;
  }
  out.push(
    `<text x="${lx}" y="${ly + 6}" font-size="11" fill="#555">whiskers: min–max over the runs</text>`,
    '</g>',
    `<text x="${M.left}" y="${H - 14}" font-size="11" fill="#666">${esc(spec.footnote)}</text>`,
    '</g>',
    '</svg>',
    '',
  );
  return out.join('\n');
}
