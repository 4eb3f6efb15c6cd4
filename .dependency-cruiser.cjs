/**
 * The layers of src/, checked by `npm test` (scripts/test.sh runs depcruise).
 * docs/architecture.md ("Layers") shows the same table as a picture.
 *
 * Each folder of src/ is one layer and may import only the layers listed for it
 * (and itself, node built-ins and npm packages). Every import counts: `import type`,
 * `export ... from`, and dynamic `import()` included (tsPreCompilationDeps keeps
 * type-only imports, which tsc would erase). src/ never imports test/ or scripts/,
 * and no module imports itself back through a cycle.
 */

/** layer → the layers it may import, bottom-up. */
const LAYERS = {
  base: [],
  checksum: ['base'],
  wire: ['checksum', 'base'],
  view: ['base'],
  native: ['base'],
  pcap: ['wire', 'base'],
  flow: ['wire', 'base'],
  tun: ['native', 'wire', 'base'],
  host: ['base'],
  control: ['config', 'view', 'native', 'base'],
  config: ['wire', 'base'],
  datapath: ['flow', 'tun', 'config', 'wire', 'checksum', 'base'],
  virtual: ['datapath', 'control', 'config', 'view', 'wire', 'base'],
  state: ['virtual', 'datapath', 'flow', 'config', 'wire', 'native', 'base'],
  coop: ['virtual', 'datapath', 'flow', 'config', 'wire', 'checksum', 'base'],
  inspect: ['control', 'pcap', 'view', 'native', 'wire', 'checksum', 'base'],
  daemon: [
    'coop',
    'state',
    'virtual',
    'datapath',
    'flow',
    'tun',
    'host',
    'control',
    'config',
    'view',
    'wire',
    'checksum',
    'native',
    'base',
  ],
  sandbox: ['base'],
  exec: ['control', 'config', 'native', 'base'],
  demo: ['sandbox', 'control', 'config', 'view', 'native', 'base'],
  cli: [
    'demo',
    'exec',
    'daemon',
    'inspect',
    'coop',
    'state',
    'virtual',
    'datapath',
    'flow',
    'tun',
    'host',
    'control',
    'config',
    'pcap',
    'view',
    'wire',
    'checksum',
    'native',
    'sandbox',
    'base',
  ],
};

const layerRules = Object.entries(LAYERS).map(([layer, below]) => ({
  name: `layer-${layer}`,
  comment: `src/${layer} may import only ${below.length ? below.join(', ') : 'nothing else in src'}`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: {
    path: '^src/',
    pathNot: [`^src/${layer}/`, ...below.map((l) => `^src/${l}/`)],
  },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'layer-unknown',
      comment: 'a folder of src/ that is not in the layer table: add it to LAYERS and to docs/architecture.md',
      severity: 'error',
      from: { path: '^src/', pathNot: `^src/(${Object.keys(LAYERS).join('|')})/` },
      to: {},
    },
    {
      name: 'src-not-to-test-or-scripts',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|scripts)/' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'an import that resolves to nothing is a typo or a missing dependency',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|native/build|node_modules)/' },
    moduleSystems: ['es6', 'cjs'],
  },
};
