import time
from tests.unit.test_sync import *  # noqa

def test_prof(app, fake, user, make_file, ctx):
    t=time.time()
    ids = [make_file(user, f"f{i:03}.txt", b"x") for i in range(101)]
    t1=time.time()
    run = sync.request_sync(user)
    print("make", t1-t, "run", time.time()-t1)
