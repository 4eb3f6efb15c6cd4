/*
 * The Kubernetes manifest of docs/kubernetes/vpm-daemonset.yaml, read as
 * Kubernetes reads it (YAML, the `yaml` package) and checked against what the
 * daemon needs on a node (docs/deployment.md, docs/scale.md):
 *
 *   - the DaemonSet's pod is in the host's network namespace (hostNetwork),
 *     its container has NET_ADMIN and is privileged (vpm writes the host's
 *     /proc/sys, read-only in any container that is not);
 *   - /dev/net/tun is a hostPath volume of type CharDevice, mounted at
 *     /dev/net/tun in the container;
 *   - the run directory (/run/vpm: the control socket and the journal `vpm
 *     down` and the next start undo) is a hostPath, mounted at /run/vpm, and
 *     is where the config's control socket is in the host's namespace;
 *   - the config: the ConfigMap's own script (merge-keys.mjs), run with node on
 *     the ConfigMap's vpm.json and the Secret's key files as the container's
 *     volumes hold them, writes a file that vpm's config loader takes, with
 *     every peer's keys from the Secret and the node's name as the daemon's
 *     name; the paths the container's command and env name are those of its
 *     volume mounts; a key file for a peer the config does not name is refused.
 *
 * Nothing here needs root or a cluster: the pod itself is not run.
 */

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { defaultControlSocket } from '../../src/base/netns.js';
import { loadConfig } from '../../src/config/load.js';
import { REPO_ROOT } from '../support/vpm.js';

const MANIFEST = join(REPO_ROOT, 'docs', 'kubernetes', 'vpm-daemonset.yaml');

interface Obj {
  kind: string;
  metadata: { name: string };
  [k: string]: unknown;
}
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  secret?: { secretName: string };
  emptyDir?: { medium?: string };
}
interface Mount {
  name: string;
  mountPath: string;
}
interface Container {
  name: string;
  args?: string[];
  command?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  securityContext?: { privileged?: boolean; capabilities?: { add?: string[] } };
  volumeMounts?: Mount[];
}
interface PodSpec {
  hostNetwork?: boolean;
  containers: Container[];
  volumes: Volume[];
}

function manifest(): Obj[] {
  const docs = parseAllDocuments(readFileSync(MANIFEST, 'utf8'));
  for (const d of docs) expect(d.errors, 'YAML errors').toEqual([]);
  return docs.map((d) => d.toJS() as Obj).filter((o) => o !== null);
}

function one(objs: Obj[], kind: string): Obj {
  const found = objs.filter((o) => o.kind === kind);
  expect(
    found.map((o) => o.metadata.name),
    `one ${kind}`,
  ).toHaveLength(1);
  return found[0]!;
}

const objs = manifest();
const ds = one(objs, 'DaemonSet') as Obj & { spec: { template: { spec: PodSpec } } };
const pod = ds.spec.template.spec;
const vpm = pod.containers.find((c) => c.name === 'vpm')!;
const configMap = one(objs, 'ConfigMap') as Obj & { data: Record<string, string> };
const secret = one(objs, 'Secret') as Obj & { stringData: Record<string, string> };

/** The container's mount of the hostPath volume of host path `path`. */
function hostPathMount(path: string): { volume: Volume; mount: Mount | undefined } {
  const volume = pod.volumes.find((v) => v.hostPath?.path === path);
  expect(volume, `a hostPath volume of ${path}`).toBeDefined();
  return { volume: volume!, mount: vpm.volumeMounts?.find((m) => m.name === volume!.name) };
}

/** The container's mount path of the volume that is ConfigMap/Secret `name`. */
function mountOf(pred: (v: Volume) => boolean): string {
  const v = pod.volumes.find(pred);
  expect(v).toBeDefined();
  const m = vpm.volumeMounts?.find((x) => x.name === v!.name);
  expect(m, `volume ${v!.name} mounted in the container`).toBeDefined();
  return m!.mountPath;
}

const envOf = (name: string) => vpm.env?.find((e) => e.name === name);

describe('docs/kubernetes/vpm-daemonset.yaml: the DaemonSet', () => {
  it('runs in the host network namespace with NET_ADMIN, privileged for /proc/sys', () => {
    expect(objs.map((o) => o.kind).sort()).toEqual([
      'ConfigMap',
      'DaemonSet',
      'Namespace',
      'Secret',
    ]);
    expect(vpm, 'a container named vpm').toBeDefined();
    expect(pod.hostNetwork).toBe(true);
    expect(vpm.securityContext?.capabilities?.add).toContain('NET_ADMIN');
    expect(vpm.securityContext?.privileged).toBe(true);
  });

  it('has /dev/net/tun from the host (CharDevice) at /dev/net/tun', () => {
    const { volume, mount } = hostPathMount('/dev/net/tun');
    expect(volume.hostPath!.type).toBe('CharDevice');
    expect(mount?.mountPath).toBe('/dev/net/tun');
  });

  it('has the run directory from the host at /run/vpm, where the control socket and journal are', () => {
    const { volume, mount } = hostPathMount('/run/vpm');
    expect(volume.hostPath!.type).toBe('DirectoryOrCreate');
    expect(mount?.mountPath).toBe('/run/vpm');
    // hostNetwork: the host's (initial) namespace, whose default socket is in /run/vpm.
    expect(dirname(defaultControlSocket('vpm0', { initial: true, name: null, inode: '1' }))).toBe(
      mount!.mountPath,
    );
  });

  it('reads its config and keys from the mounts the ConfigMap and the Secret are', () => {
    const configDir = mountOf((v) => v.configMap?.name === configMap.metadata.name);
    const keysDir = mountOf((v) => v.secret?.secretName === secret.metadata.name);
    expect(envOf('VPM_CONFIG_IN')?.value).toBe(join(configDir, 'vpm.json'));
    expect(envOf('VPM_KEYS_DIR')?.value).toBe(keysDir);
    expect(envOf('VPM_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    const script = vpm.args?.join('\n') ?? '';
    expect(script).toContain(`node ${join(configDir, 'merge-keys.mjs')}`);
    // The written config is on a memory-only volume of the pod, and is what vpm up reads.
    const out = /^\s*cfg=(\S+)$/m.exec(script)?.[1];
    expect(out).toBeDefined();
    const outDir = mountOf((v) => v.emptyDir?.medium === 'Memory');
    expect(dirname(out!)).toBe(outDir);
    expect(script).toContain('up -c "$cfg"');
  });
});

describe('docs/kubernetes/vpm-daemonset.yaml: the config', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  /** The ConfigMap's and the Secret's files as their volumes hold them; the script run on them. */
  function merge(extraKeys: Record<string, string> = {}) {
    dir = mkdtempSync(join(tmpdir(), 'vpm-k8s-'));
    const cm = join(dir, 'config');
    const keys = join(dir, 'keys');
    mkdirSync(cm);
    mkdirSync(keys);
    for (const [f, text] of Object.entries(configMap.data)) writeFileSync(join(cm, f), text);
    for (const [f, text] of Object.entries({ ...secret.stringData, ...extraKeys }))
      writeFileSync(join(keys, f), text);
    // What the kubelet adds to a Secret volume besides the keys.
    mkdirSync(join(keys, '..2026_12_01_00_00_00.000000000'));
    const r = spawnSync(process.execPath, [join(cm, 'merge-keys.mjs')], {
      env: {
        PATH: process.env.PATH,
        VPM_NAME: 'node-1',
        VPM_CONFIG_IN: join(cm, 'vpm.json'),
        VPM_KEYS_DIR: keys,
      },
      encoding: 'utf8',
    });
    const out = join(dir, 'vpm.json');
    writeFileSync(out, r.stdout);
    return { status: r.status, stderr: r.stderr, out };
  }

  it('written from the ConfigMap and the Secret, loads with vpm config loader', () => {
    const r = merge();
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const cfg = loadConfig(r.out);
    expect(cfg.cooperative?.name).toBe('node-1');
    const peers = cfg.cooperative?.peers ?? [];
    expect(peers.map((p) => p.name)).toEqual(
      Object.keys(secret.stringData).map((f) => f.slice(0, -5)),
    );
    for (const p of peers) {
      const fromSecret = JSON.parse(secret.stringData[`${p.name}.json`]!) as {
        id: string;
        key: string;
      }[];
      expect(p.keys.map((k) => k.id)).toEqual(fromSecret.map((k) => k.id));
      expect(p.key).toBe(fromSecret[0]!.key);
    }
  });

  it('without the Secret, the config does not load (no peer runs without keys)', () => {
    dir = mkdtempSync(join(tmpdir(), 'vpm-k8s-'));
    const f = join(dir, 'vpm.json');
    writeFileSync(f, configMap.data['vpm.json']!);
    expect(() => loadConfig(f)).toThrow(/peer "client-a" has no key/);
  });

  it('refuses a key file for a peer the config does not name', () => {
    const r = merge({ 'client-z.json': `[{ "id": "k1", "key": "${'ab'.repeat(32)}" }]` });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no peer "client-z" in cooperative.peers/);
  });
});
