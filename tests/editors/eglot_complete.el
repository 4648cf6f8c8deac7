;;; eglot_complete.el --- Emacs with eglot as a user of jupyter-ds  -*- lexical-binding: t -*-

;; tests/editors/test_emacs.py runs
;;   emacs --batch -l $JDS_EDITOR_CONFIG -l eglot_complete.el
;; where $JDS_EDITOR_CONFIG is README.md's eglot snippet, as written.  For each case of
;; $JDS_EDITOR_CASES (JSON: [{file, line, col}], 0-based line, column in characters) this
;; opens the Python file (python-mode-hook: `eglot-ensure'; the first one starts
;; `jupyter-ds lsp', the others join it), asks for textDocument/completion at the cursor
;; as eglot does, lists the candidates of eglot's completion-at-point function, then runs
;; `completion-at-point' itself (C-M-i) and records the buffer.  All of it goes to
;; $JDS_EDITOR_OUT as JSON; every wait is bounded by $JDS_EDITOR_TIMEOUT_S.  Exit status
;; 0 when it got through, 1 otherwise.

;;; Code:

(require 'json)
(require 'subr-x)
(require 'cl-lib)

(defvar jds-result nil "What the run saw (an alist), written as JSON at the end.")

(defun jds-env (name)
  "The value of the environment variable NAME; an error when it is not set."
  (let ((value (getenv name)))
    (when (or (null value) (string-empty-p value))
      (error "$%s is not set" name))
    value))

(defun jds-put (key value)
  "Record VALUE under KEY in `jds-result'."
  (setq jds-result (cons (cons key value) (assq-delete-all key jds-result))))

(defun jds-step (name)
  "Record that step NAME was reached."
  (jds-put 'steps (append (alist-get 'steps jds-result) (list name))))

(defun jds-wait (timeout what predicate)
  "Run the event loop until PREDICATE holds; an error naming WHAT after TIMEOUT s."
  (let ((deadline (+ (float-time) timeout)))
    (while (and (not (funcall predicate)) (< (float-time) deadline))
      (accept-process-output nil 0.02))
    (unless (funcall predicate)
      (error "Timed out after %s s waiting for %s" timeout what))))

(defun jds-eglot-buffers (&optional only-stderr)
  "The text of eglot's buffers (its events and the server's stderr), for a failure."
  (cl-loop for buffer in (buffer-list)
           for name = (buffer-name buffer)
           when (and (string-match-p "EGLOT" name)
                     (or (not only-stderr) (string-match-p "stderr" name)))
           collect (cons name (with-current-buffer buffer
                                (buffer-substring-no-properties
                                 (max (point-min) (- (point-max) 6000)) (point-max))))))

(defun jds-case (case timeout seen)
  "Complete at CASE's cursor; record what was seen in the hash table SEEN as it goes."
  (let ((file (gethash "file" case)) server)
    (puthash "file" file seen)
    (find-file file)
    (puthash "major_mode" (symbol-name major-mode) seen)
    ;; `eglot-ensure' connects after the next command: this is that moment.
    (run-hooks 'post-command-hook)
    (jds-wait timeout "eglot to manage the buffer with the language server"
              (lambda () (and (setq server (eglot-current-server)) eglot--managed-mode)))
    (unless (alist-get 'lsp_pid jds-result)
      (let ((process (jsonrpc--process server)))
        (jds-put 'server_command (vconcat (process-command process)))
        (jds-put 'lsp_pid (process-id process))
        (with-temp-file (jds-env "JDS_EDITOR_PID")
          (insert (number-to-string (process-id process)))))
      (jds-put 'completion_provider
               (if (eglot--server-capable :completionProvider) t :json-false))
      (jds-step "connected"))

    (goto-char (point-min))
    (forward-line (gethash "line" case))
    (forward-char (gethash "col" case))
    ;; The request as eglot makes it, and the items as they come back.
    (let* ((response (jsonrpc-request server :textDocument/completion
                                      (eglot--CompletionParams) :timeout timeout))
           (items (if (vectorp response) response (plist-get response :items))))
      (puthash "items" (vconcat items) seen))
    ;; What completion-at-point offers here: eglot's completion function's candidates.
    (let ((capf (eglot-completion-at-point)))
      (puthash "capf_candidates"
               (vconcat (mapcar #'substring-no-properties
                                (all-completions (buffer-substring (nth 0 capf) (nth 1 capf))
                                                 (nth 2 capf))))
               seen))
    ;; C-M-i: complete at point, accepting the (sole) candidate with eglot's edit.
    (completion-at-point)
    (puthash "buffer" (buffer-substring-no-properties (point-min) (point-max)) seen)))

(defun jds-main ()
  (let ((timeout (string-to-number (jds-env "JDS_EDITOR_TIMEOUT_S")))
        (cases (let ((json-array-type 'list) (json-object-type 'hash-table)
                     (json-key-type 'string))
                 (json-read-from-string (jds-env "JDS_EDITOR_CASES"))))
        (seen-cases nil)
        (index 0))
    (require 'eglot)
    (setq eglot-connect-timeout timeout
          jsonrpc-default-request-timeout timeout)
    (dolist (case cases)
      (let ((seen (make-hash-table :test 'equal)))
        (setq seen-cases (append seen-cases (list seen)))
        (jds-put 'cases (vconcat seen-cases))
        (jds-case case timeout seen)
        (jds-step (format "case %d" (setq index (1+ index))))))
    (jds-put 'stderr (jds-eglot-buffers t))
    (ignore-errors (eglot-shutdown (eglot-current-server) nil 2))))

(let ((status 0))
  (condition-case err
      (progn (jds-main) (jds-put 'ok t))
    (error
     (setq status 1)
     (jds-put 'ok :json-false)
     (jds-put 'error (error-message-string err))
     (jds-put 'eglot_buffers (jds-eglot-buffers))))
  (let ((out (getenv "JDS_EDITOR_OUT")))
    (when out
      (with-temp-file out
        (insert (let ((json-encoding-pretty-print nil)) (json-encode jds-result))))))
  (kill-emacs status))

;;; eglot_complete.el ends here
