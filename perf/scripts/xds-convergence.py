#!/usr/bin/env python3
"""End to end through remora-proxy: the time from a mesh-file change to
traffic through a remora-proxy (configured over xDS) reaching the new
endpoint. Starts two demo upstreams, remora-control-plane and remora-proxy
(debug builds from the target directory), moves the endpoint 20 times and
prints the median, p90 and max.

    cargo build -p remora-proxy -p remora-control-plane --example demo_peer
    perf/scripts/xds-convergence.py sotw|delta [DEBOUNCE, default 100ms]
"""
import os, statistics, subprocess, sys, tempfile, time, urllib.request
T=os.environ.get("REMORA_TARGET_DIR", os.path.join(subprocess.run(["cargo","metadata","--format-version","1","--no-deps"],capture_output=True,text=True).stdout.split('"target_directory":"')[1].split('"')[0], "debug"))
d=tempfile.mkdtemp()
mesh=os.path.join(d,"mesh.yaml")
def write(ep):
    tmp=mesh+".tmp"
    open(tmp,"w").write(f"""
services:
  - name: b
    port: 80
    endpoints: ['{ep}']
proxies:
  - node_id: p
    outbound: [{{service: b, listen: '127.0.0.1:25001'}}]
""")
    os.rename(tmp,mesh)
procs=[]
procs.append(subprocess.Popen([T+"/examples/demo_peer","upstream","one","127.0.0.1:25101"]))
procs.append(subprocess.Popen([T+"/examples/demo_peer","upstream","two","127.0.0.1:25102"]))
write("127.0.0.1:25101")
procs.append(subprocess.Popen([T+"/remora-control-plane","serve","--mesh",mesh,"--xds-address","127.0.0.1:25000","--admin-address","127.0.0.1:25002","--debounce",sys.argv[2] if len(sys.argv)>2 else "100ms","--log-level","warn"]))
time.sleep(0.5)
env=dict(os.environ, REMORA_ADMIN_ADDRESS="127.0.0.1:25003", REMORA_LOG_LEVEL="warn")
args=[T+"/remora-proxy","--xds","127.0.0.1:25000","--node-id","p"]+(["--delta"] if sys.argv[1]=="delta" else [])
procs.append(subprocess.Popen(args, env=env))
def who():
    try:
        with urllib.request.urlopen("http://127.0.0.1:25001/", timeout=2) as r:
            return r.headers.get("x-upstream")
    except Exception as e:
        return None
for _ in range(200):
    if who()=="one": break
    time.sleep(0.05)
samples=[]
cur="one"
for i in range(20):
    nxt="two" if cur=="one" else "one"
    t0=time.monotonic()
    write("127.0.0.1:25102" if nxt=="two" else "127.0.0.1:25101")
    while who()!=nxt:
        if time.monotonic()-t0 > 10:
            for p in procs: p.kill()
            sys.exit(f"move {i} to {nxt}: traffic did not move within 10 s")
        time.sleep(0.002)
    samples.append((time.monotonic()-t0)*1000)
    cur=nxt
    time.sleep(0.3)
for p in procs: p.kill()
samples.sort()
print(sys.argv[1], "debounce", sys.argv[2] if len(sys.argv)>2 else "100ms", "file change -> traffic moved (ms): median %.1f p90 %.1f max %.1f n=%d"%(statistics.median(samples), samples[int(len(samples)*0.9)-1], samples[-1], len(samples)))
